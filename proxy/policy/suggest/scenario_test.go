package suggest

import (
	"testing"

	"metaguard.dev/metaguard/proxy/audit"
)

// A scenario is a cluster's traffic under the policy in force, and the
// credential paths nobody should get unless their group read them.
type scenario struct {
	name   string
	config string
	calls  []call
	// probes are credential paths (endpoint, path) to try for every pod.
	probes [][2]string
}

var (
	web1    = pod{"web-6f7c9-a", "shop", "web", map[string]string{"app": "web", "tier": "front"}}
	web2    = pod{"web-6f7c9-b", "shop", "web", map[string]string{"app": "web", "tier": "front"}}
	webNext = pod{"web-next-0", "shop", "web", map[string]string{"app": "web-next"}}
	batch   = pod{"nightly-28", "shop", "batch", map[string]string{"job-name": "nightly-28"}}
	monitor = pod{"monitor-0", "ops", "default", map[string]string{"app": "monitor"}}
	// opsWeb has the same app label as the shop pods, in another namespace.
	opsWeb = pod{"web-0", "ops", "default", map[string]string{"app": "web"}}

	frontend = pod{"frontend-1", "default", "frontend", map[string]string{"app": "frontend"}}
	reporter = pod{"reporter-1", "default", "reporter", map[string]string{"app": "reporter"}}

	billing = pod{"billing-1", "payments", "billing", map[string]string{"app": "billing"}}
	payWeb  = pod{"payweb-1", "payments", "default", map[string]string{"app": "payweb"}}
)

const awsConfig = `apiVersion: metaguard.dev/v1alpha1
kind: Policy
mode: audit
endpoints:
  - name: aws
    address: 169.254.169.254:80
    flavor: aws
  - {name: aws-v6, address: "[fd00:ec2::254]:80", flavor: aws}
defaultAction: deny
rateLimit: {requestsPerSecond: 50, burst: 100}
rules:
  - name: node-facts
    podSelector: {}
    allow:
      - paths: ["/latest/meta-data/placement/**", "/latest/meta-data/instance-id"]
      - methods: [PUT]
        paths: ["/latest/api/token"]
  - name: web-credentials
    podSelector: {matchLabels: {app: web}}
    allow:
      - paths: ["/latest/meta-data/iam/security-credentials/**"]
    credentials: allow
credentialPaths: ["/latest/user-data"]
`

const gcpConfig = `apiVersion: metaguard.dev/v1alpha1
kind: Policy
mode: audit
endpoints: [{name: gcp, address: "169.254.169.254:80", flavor: gcp}]
defaultAction: deny
rules:
  - name: frontend-token
    podSelector: {matchLabels: {app: frontend}}
    allow: [{paths: ["/computeMetadata/v1/instance/service-accounts/default/token"]}]
    credentials: allow
`

const azureConfig = `apiVersion: metaguard.dev/v1alpha1
kind: Policy
endpoints: [{name: azure, address: "169.254.169.254:80", flavor: azure}]
defaultAction: allow
rules:
  - name: billing-identity
    podSelector: {matchLabels: {app: billing}}
    mode: audit
    allow:
      - paths: ["/metadata/identity/oauth2/token"]
        query: {client_id: ["00000000-0000-0000-0000-000000000001"]}
    credentials: allow
`

// mixedConfig has several flavors at once, as the decision tests do, and a
// generic endpoint whose only credential is the added credentialPaths.
const mixedConfig = `apiVersion: metaguard.dev/v1alpha1
kind: Policy
mode: audit
endpoints:
  - {name: aws, address: "169.254.169.254:80", flavor: aws}
  - {name: gcp, address: "169.254.169.252:80", flavor: gcp}
  - {name: onprem, address: "192.168.100.21:32000", flavor: generic}
defaultAction: deny
credentialPaths: ["/v1/secrets/**"]
`

func awsCalls() []call {
	var c []call
	for _, p := range []pod{web1, web2} {
		c = append(c, call{pod: p, endpoint: "aws", method: "PUT", path: "/latest/api/token"})
		c = append(c, gets(p, "aws",
			"/latest/meta-data/", "/latest/meta-data/instance-id",
			"/latest/meta-data/iam/security-credentials/",
			"/latest/meta-data/iam/security-credentials/web-role")...)
	}
	c = append(c, gets(web1, "aws", expand("/latest/meta-data/placement",
		"availability-zone", "availability-zone-id", "region", "group-name", "partition-number")...)...)
	c = append(c, call{pod: web2, endpoint: "aws", method: "HEAD", path: "/latest/meta-data/ami-id"})
	c = append(c, call{pod: web2, endpoint: "aws-v6", method: "PUT", path: "/latest/api/token"})
	c = append(c, gets(web2, "aws-v6", "/latest/meta-data/instance-id")...)
	c = append(c, gets(webNext, "aws", "/latest/meta-data/instance-id")...)
	for _, mac := range []string{"0a:1b", "0a:1c", "0a:1d", "0a:1e"} {
		c = append(c, gets(batch, "aws", expand("/latest/meta-data/network/interfaces/macs/"+mac, "local-ipv4s", "subnet-id")...)...)
	}
	c = append(c, gets(batch, "aws", "/latest/user-data", "/2016-09-02/meta-data/local-ipv4")...)
	c = append(c, gets(monitor, "aws", "/latest/meta-data/instance-type", "/latest/dynamic/instance-identity/document")...)
	c = append(c, gets(opsWeb, "aws", "/latest/meta-data/hostname")...)
	// What the upstream did not serve is not a use: a path made up (404),
	// the upstream refusing (403) or failing (502).
	c = append(c, call{pod: web1, endpoint: "aws", method: "GET", path: "/latest/meta-data/made-up", status: 404})
	c = append(c, call{pod: web2, endpoint: "aws", method: "GET", path: "/latest/meta-data/tags/instance/secret", status: 403})
	c = append(c, call{pod: monitor, endpoint: "aws", method: "GET", path: "/latest/meta-data/events/maintenance/scheduled", status: 502})
	return c
}

func gcpCalls() []call {
	const v1 = "/computeMetadata/v1"
	c := gets(frontend, "gcp", "/",
		v1+"/instance/service-accounts/default/token",
		v1+"/instance/service-accounts/default/email",
		v1+"/instance/service-accounts/default/",
		v1+"/project/project-id", v1+"/instance/zone")
	// The attributes directory holds kube-env, a credential: four used
	// siblings there must stay literal.
	c = append(c, gets(frontend, "gcp", expand(v1+"/instance/attributes", "cluster-name", "cluster-location", "cluster-uid", "instance-template")...)...)
	c = append(c, call{pod: frontend, endpoint: "gcp", method: "GET", path: v1 + "/instance/", queryKeys: []string{"recursive"}})
	c = append(c, gets(reporter, "gcp", expand(v1+"/project/attributes", "google-compute-default-region", "google-compute-default-zone", "enable-oslogin", "gke-cluster")...)...)
	c = append(c, call{pod: reporter, endpoint: "gcp", method: "GET", path: v1 + "/instance/service-accounts/reporter@p.iam.gserviceaccount.com/identity", queryKeys: []string{"audience", "format"}})
	// A wait_for_change request answered "nothing changed" is a use; a
	// path the pod made up, answered 404, is not.
	c = append(c, call{pod: reporter, endpoint: "gcp", method: "GET", path: v1 + "/project/attributes/ssh-keys", queryKeys: []string{"wait_for_change"}, status: 304})
	c = append(c, call{pod: reporter, endpoint: "gcp", method: "GET", path: v1 + "/project/attributes/made-up", status: 404})
	return c
}

func azureCalls() []call {
	c := []call{{pod: billing, endpoint: "azure", method: "GET", path: "/metadata/identity/oauth2/token", queryKeys: []string{"api-version", "client_id", "resource"}}}
	for _, f := range []string{"location", "vmId", "name", "zone", "subscriptionId"} {
		c = append(c, call{pod: billing, endpoint: "azure", method: "GET", path: "/metadata/instance/compute/" + f, queryKeys: []string{"api-version", "format"}})
	}
	c = append(c, call{pod: payWeb, endpoint: "azure", method: "GET", path: "/metadata/instance", queryKeys: []string{"api-version"}})
	// Enforced: no rule selects payweb and defaultAction: allow never
	// opens credentials, so this is a deny line and must stay denied.
	c = append(c, call{pod: payWeb, endpoint: "azure", method: "GET", path: "/metadata/identity/oauth2/token", queryKeys: []string{"api-version", "resource"}})
	return c
}

func mixedCalls() []call {
	c := gets(web1, "onprem", "/v1/secrets/db", "/v1/config/a", "/v1/config/b/c", "/v1/config/d", "/v1/config/e")
	c = append(c, gets(web1, "onprem", expand("/v1/status", "a", "b", "c", "d")...)...)
	c = append(c, gets(web1, "aws", "/latest/meta-data/instance-id")...)
	c = append(c, gets(monitor, "gcp", "/computeMetadata/v1/instance/service-accounts/default/token")...)
	c = append(c, gets(monitor, "aws", "/latest/meta-data/instance-id")...)
	return c
}

var scenarios = []scenario{
	{
		name: "aws", config: awsConfig, calls: awsCalls(),
		probes: [][2]string{
			{"aws", "/latest/meta-data/iam/security-credentials/web-role"},
			{"aws", "/latest/meta-data/iam/security-credentials/other-role"},
			{"aws", "/latest/meta-data/iam/security-credentials/"},
			{"aws", "/latest/meta-data/iam/info"},
			{"aws", "/2016-09-02/meta-data/iam/security-credentials/web-role"},
			{"aws", "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance"},
			{"aws", "/latest/user-data"},
			{"aws", "/2016-09-02/user-data"},
			{"aws-v6", "/latest/meta-data/iam/security-credentials/web-role"},
			{"aws-v6", "/latest/user-data"},
		},
	},
	{
		name: "gcp", config: gcpConfig, calls: gcpCalls(),
		probes: [][2]string{
			{"gcp", "/computeMetadata/v1/instance/service-accounts/default/token"},
			{"gcp", "/computeMetadata/v1/instance/service-accounts/default/identity"},
			{"gcp", "/computeMetadata/v1/instance/service-accounts/other@p.iam.gserviceaccount.com/token"},
			{"gcp", "/computeMetadata/v1/instance/service-accounts/reporter@p.iam.gserviceaccount.com/identity"},
			{"gcp", "/computeMetadata/v1/instance/service-accounts/reporter@p.iam.gserviceaccount.com/token"},
			{"gcp", "/computeMetadata/v1/instance/attributes/kube-env"},
			{"gcp", "/computeMetadata/v1beta1/instance/service-accounts/default/token"},
			{"gcp", "/0.1/meta-data/service-accounts/default/acquire"},
		},
	},
	{
		name: "azure", config: azureConfig, calls: azureCalls(),
		probes: [][2]string{
			{"azure", "/metadata/identity/oauth2/token"},
			{"azure", "/metadata/identity/info"},
			{"azure", "/metadata/identity/oauth2/token/"},
		},
	},
	{
		name: "several flavors and a generic endpoint", config: mixedConfig, calls: mixedCalls(),
		probes: [][2]string{
			{"onprem", "/v1/secrets/db"},
			{"onprem", "/v1/secrets/other"},
			{"aws", "/v1/secrets/db"},
			{"gcp", "/computeMetadata/v1/instance/service-accounts/default/token"},
			{"aws", "/latest/meta-data/iam/security-credentials/r"},
		},
	},
}

// deniedLines are lines no rule may be made of: refused requests, the
// proxy's own decisions, reasons this version does not know, and a
// credential read that names no rule granting it.
func deniedLines(t *testing.T, endpoint string) []byte {
	who := func(r audit.Record) audit.Record {
		r.Pod, r.Namespace, r.ServiceAccount, r.Labels = web1.name, web1.namespace, web1.sa, web1.labels
		return r
	}
	return writeLog(t,
		who(audit.Record{Endpoint: endpoint, Method: "GET", Path: "/latest/meta-data/%2e%2e/", Decision: audit.DecisionDeny, Reason: audit.ReasonMalformed, Status: 400}),
		audit.Record{Endpoint: "unknown", Method: "GET", Path: "/anything", Decision: audit.DecisionDeny, Reason: audit.ReasonUnknownEndpoint, Status: 403},
		audit.Record{Endpoint: endpoint, Method: "GET", Path: "/leak/one", Decision: audit.DecisionDeny, Reason: audit.ReasonUnknownPod, Status: 503},
		// What an older proxy logged: forwarded for a pod it could not name.
		audit.Record{Endpoint: endpoint, Method: "GET", Path: "/leak/two", Decision: audit.DecisionAuditDeny, Reason: audit.ReasonAmbiguousIP, Status: 200},
		who(audit.Record{Endpoint: endpoint, Method: "GET", Path: "/leak/three", Decision: audit.DecisionDeny, Reason: audit.ReasonRateLimited, Status: 429}),
		who(audit.Record{Endpoint: endpoint, Method: "GET", Path: "/leak/four", Decision: audit.DecisionDeny, Reason: audit.ReasonForwardedHeader, Status: 403}),
		who(audit.Record{Endpoint: endpoint, Method: "GET", Path: "/leak/five", Decision: audit.DecisionAllow, Reason: audit.ParseReason("decided-by-a-newer-proxy"), Status: 200}),
		who(audit.Record{Endpoint: endpoint, Method: "GET", Path: "/leak/six", Decision: audit.DecisionAuditDeny, Reason: audit.ReasonNotAllowed, Status: 404}),
	)
}
