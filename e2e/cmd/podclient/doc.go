// Command podclient is the workload of the e2e sandbox: it runs inside a
// pod's network namespace and talks to the instance metadata service the
// way real workloads do, through each cloud's own client library, with the
// library's own probes, headers and retries:
//
//   - AWS: the AWS SDK for Go v2 IMDS client (IMDSv2 token first, IMDSv1
//     fallback unless -no-fallback);
//   - GCP: cloud.google.com/go/compute/metadata (OnGCE, the metadata
//     getters, SubscribeWithContext) and golang.org/x/oauth2/google's
//     Application Default Credentials for tokens;
//   - Azure: github.com/Azure/azure-sdk-for-go/sdk/azidentity's
//     ManagedIdentityCredential (or DefaultAzureCredential with -dac).
//
// It prints one JSON object so a test can assert on what the workload saw:
//
//	{"ok":true,"body":"i-0123..."}
//	{"ok":false,"status":403,"error":"..."}
//	{"ok":false,"status":403,"values":{"on_gce":"true"},"errors":{"project_id":"..."}}
//
// Commands:
//
//	aws-get PATH        GetMetadata (PATH relative to /latest/meta-data/)
//	aws-dynamic PATH    GetDynamicData
//	aws-userdata        GetUserData
//	aws-region          GetRegion
//	aws-creds           the instance role's credentials, read the way the
//	                    SDK's ec2rolecreds provider does; keys, not secrets
//	gcp-facts           OnGCE, project, zone, instance, attributes, account
//	gcp-get SUFFIX...   raw reads below /computeMetadata/v1/
//	gcp-token           an access token through Application Default Credentials
//	gcp-subscribe S     follow S with wait_for_change until it changes once
//	azure-token R       a managed identity token for resource R
//	get URL             one plain HTTP GET, no library (status and body)
//	probe URL INTERVAL COUNT
//	                    GET URL COUNT times, one JSON line each, then wait
//	sleep               wait for SIGTERM: a workload container's main process
//
// The last three serve the e2e node's workload image, where podclient is
// the only program in the container.
//
// It exits 0 whenever it printed a result, also a failed one, and 2 on a
// usage error.
package main
