// Command podclient is the workload of the e2e sandbox: it runs inside a
// pod's network namespace and talks to the instance metadata service the
// way real workloads do, through the AWS SDK for Go v2 IMDS client
// (IMDSv2 token first, IMDSv1 fallback unless -no-fallback, the SDK's own
// retries and headers). It prints one JSON object so a test can assert on
// what the workload saw:
//
//	{"ok":true,"body":"i-0123..."}
//	{"ok":false,"status":403,"error":"..."}
//
// Subcommands:
//
//	aws-get PATH        GetMetadata (PATH relative to /latest/meta-data/)
//	aws-dynamic PATH    GetDynamicData
//	aws-userdata        GetUserData
//	aws-region          GetRegion
//	aws-creds           the credentials of the instance role, read the way
//	                    the SDK's ec2rolecreds provider does (list the role,
//	                    then fetch it); keys in the output, secrets not
//	get URL             one plain HTTP GET, no SDK (status and body)
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
