package policy

import (
	"net/url"
	"testing"

	"metaguard.dev/metaguard/identity"
	"metaguard.dev/metaguard/proxy/audit"
)

const decidePolicy = `
apiVersion: metaguard.dev/v1alpha1
kind: Policy
mode: enforce
endpoints:
  - {name: aws, address: "169.254.169.254:80", flavor: aws}
  - {name: gcp, address: "169.254.169.252:80", flavor: gcp}
  - {name: azure, address: "169.254.169.251:80", flavor: azure}
  - {name: onprem, address: "192.168.100.21:32000", flavor: generic}
defaultAction: deny
rules:
  - name: node-facts
    podSelector: {}
    endpoints: [aws]
    allow:
      - methods: [GET, HEAD]
        paths: ["/latest/meta-data/", "/latest/meta-data/placement/**", "/latest/meta-data/instance-id", "/latest/"]
      - methods: [PUT]
        paths: ["/latest/api/token"]
  - name: accessors
    podSelector: {matchLabels: {role: metadata-accessor}}
    namespaceSelector: {matchLabels: {metaguard.dev/accessors: "true"}}
    allow:
      - paths: ["/**"]
    credentials: allow
  - name: batch-sa
    serviceAccounts: [jobs/batch-runner]
    podSelector: {matchExpressions: [{key: tier, operator: In, values: [batch]}]}
    allow:
      - paths: ["/latest/meta-data/iam/**"]
  - name: gcp-readers
    podSelector: {matchExpressions: [{key: gcp, operator: Exists}]}
    endpoints: [gcp]
    allow:
      - paths: ["/", "/computeMetadata/v1/**"]
  - name: gcp-hostkeys
    podSelector: {matchLabels: {app: guest-agent}}
    endpoints: [gcp]
    allow:
      - methods: [PUT, DELETE]
        paths: ["/computeMetadata/v1/instance/guest-attributes/**", "/computeMetadata/v1/instance/attributes/**"]
  - name: billing-identity
    podSelector: {matchLabels: {app: billing}}
    endpoints: [azure]
    allow:
      - paths: ["/metadata/identity/oauth2/token"]
        query: {client_id: ["00000000-0000-0000-0000-000000000001"]}
    credentials: allow
  - name: trial
    mode: audit
    podSelector: {matchLabels: {app: trial}}
    allow:
      - paths: ["/latest/meta-data/instance-id"]
  - name: onprem-accessor
    podSelector: {matchLabels: {role: metadata-accessor}}
    namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: metadata-access}}
    endpoints: [onprem]
    allow:
      - paths: ["/**"]
credentialPaths:
  - "/latest/user-data"
`

func mustParse(t testing.TB, doc string) *Policy {
	t.Helper()
	p, err := Parse("test.yaml", []byte(doc))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return p
}

func pod(ns string, labels map[string]string, nsLabels map[string]string, sa string) identity.Identity {
	if nsLabels == nil {
		nsLabels = map[string]string{"kubernetes.io/metadata.name": ns}
	}
	if sa == "" {
		sa = "default"
	}
	return identity.Identity{Namespace: ns, Name: "p", UID: "uid", ServiceAccount: sa, Labels: labels, NamespaceLabels: nsLabels}
}

func TestDecide(t *testing.T) {
	p := mustParse(t, decidePolicy)
	ep := func(name string) *Endpoint {
		e, ok := p.EndpointByName(name)
		if !ok {
			t.Fatalf("no endpoint %q", name)
		}
		return e
	}
	plain := pod("web", map[string]string{"app": "web"}, nil, "")
	accessor := pod("ops", map[string]string{"role": "metadata-accessor"}, map[string]string{"metaguard.dev/accessors": "true"}, "")
	accessorWrongNS := pod("web", map[string]string{"role": "metadata-accessor"}, nil, "")
	batch := pod("jobs", map[string]string{"tier": "batch"}, nil, "batch-runner")
	batchOtherSA := pod("jobs", map[string]string{"tier": "batch"}, nil, "default")
	gcpPod := pod("web", map[string]string{"gcp": ""}, nil, "")
	billing := pod("pay", map[string]string{"app": "billing"}, nil, "")
	trial := pod("web", map[string]string{"app": "trial"}, nil, "")
	seed3 := pod("metadata-access", map[string]string{"role": "metadata-accessor"}, nil, "")
	seed1 := pod("metadata-access", map[string]string{"app": "pod1"}, nil, "")
	batchElsewhere := pod("tenant", map[string]string{"tier": "batch"}, nil, "batch-runner")
	guestAgent := pod("kube-system", map[string]string{"app": "guest-agent"}, nil, "")
	idQuery := func(kv ...string) url.Values {
		q := url.Values{}
		for i := 0; i+1 < len(kv); i += 2 {
			q.Set(kv[i], kv[i+1])
		}
		return q
	}
	const clientA = "00000000-0000-0000-0000-000000000001"

	tests := []struct {
		name   string
		id     identity.Identity
		ep     string
		method string
		path   string
		query  url.Values
		want   string // decision label
		rule   string
		reason audit.Reason
	}{
		// Rules are additive; a request is allowed when any selecting rule allows it.
		{"an empty podSelector selects every pod", plain, "aws", "GET", "/latest/meta-data/instance-id", nil, "allow", "node-facts", audit.ReasonAllowed},
		{"a trailing ** matches zero segments", plain, "aws", "GET", "/latest/meta-data/placement", nil, "allow", "node-facts", audit.ReasonAllowed},
		{"a trailing ** matches many segments", plain, "aws", "GET", "/latest/meta-data/placement/region/x", nil, "allow", "node-facts", audit.ReasonAllowed},
		{"a path outside every allowlist is denied naming no rule", plain, "aws", "GET", "/latest/meta-data/hostname", nil, "deny", "", audit.ReasonNotAllowed},
		{"methods absent means GET and HEAD only", gcpPod, "gcp", "PUT", "/computeMetadata/v1/instance/guest-attributes/x/y", nil, "deny", "", audit.ReasonNotAllowed},
		{"AWS serves PUT only for the IMDSv2 token", plain, "aws", "PUT", "/latest/meta-data/instance-id", nil, "deny", "", audit.ReasonMethod},
		{"a PUT entry allows the IMDSv2 token", plain, "aws", "PUT", "/latest/api/token", nil, "allow", "node-facts", audit.ReasonAllowed},
		{"HEAD is allowed where listed", plain, "aws", "HEAD", "/latest/meta-data/instance-id", nil, "allow", "node-facts", audit.ReasonAllowed},
		{"a trailing slash is significant", plain, "aws", "GET", "/latest/meta-data/instance-id/", nil, "deny", "", audit.ReasonNotAllowed},
		{"paths are case-sensitive", plain, "aws", "GET", "/latest/meta-data/Instance-id", nil, "deny", "", audit.ReasonNotAllowed},
		{"a rule limited to other endpoints does not select", plain, "gcp", "GET", "/computeMetadata/v1/instance/id", nil, "deny", "", audit.ReasonNoRule},

		// Credential paths and strip.
		{"a credential path under a strip rule is denied naming the rule", plain, "aws", "GET", "/latest/meta-data/iam/security-credentials/role", nil, "deny", "", audit.ReasonNotAllowed},
		{"an allowed listing above credentials is stripped", plain, "aws", "GET", "/latest/meta-data/", nil, "strip", "node-facts", audit.ReasonCredentialsHidden},
		{"extra credentialPaths make the listing above them stripped", plain, "aws", "GET", "/latest/", nil, "strip", "node-facts", audit.ReasonCredentialsHidden},
		{"a listing with no credential below is a plain allow", plain, "aws", "GET", "/latest/meta-data/placement/", nil, "allow", "node-facts", audit.ReasonAllowed},
		{"a credentials: allow rule opens credential paths", accessor, "aws", "GET", "/latest/meta-data/iam/security-credentials/role", nil, "allow", "accessors", audit.ReasonCredentialsAllowed},
		{"a credentials: allow rule sees listings unstripped", accessor, "aws", "GET", "/latest/meta-data/", nil, "allow", "accessors", audit.ReasonCredentialsAllowed},
		{"every AWS version segment is a credential path", accessorWrongNS, "aws", "GET", "/2016-09-02/meta-data/iam/security-credentials/role", nil, "deny", "", audit.ReasonNotAllowed},
		{"extra credential paths are widened to every AWS version", accessor, "aws", "GET", "/1.0/user-data", nil, "allow", "accessors", audit.ReasonCredentialsAllowed},
		{"an allowed credential path without credentials: allow is denied naming the rule", batch, "aws", "GET", "/latest/meta-data/iam/security-credentials/role", nil, "deny", "batch-sa", audit.ReasonCredentialPath},

		// Selection: pod, namespace, service account.
		{"namespaceSelector must match too", accessorWrongNS, "aws", "GET", "/latest/meta-data/hostname", nil, "deny", "", audit.ReasonNotAllowed},
		{"serviceAccounts must list the pod's account", batchOtherSA, "aws", "GET", "/latest/meta-data/iam/info", nil, "deny", "", audit.ReasonNotAllowed},
		{"matchExpressions In selects", batch, "aws", "GET", "/latest/meta-data/iam/info", nil, "deny", "batch-sa", audit.ReasonCredentialPath},
		{"a service account of the same name in another namespace is not selected", batchElsewhere, "aws", "GET", "/latest/meta-data/iam/info", nil, "deny", "", audit.ReasonNotAllowed},
		{"matchExpressions Exists selects", gcpPod, "gcp", "GET", "/computeMetadata/v1/instance/id", nil, "allow", "gcp-readers", audit.ReasonAllowed},

		// GCP.
		{"GCP token is a credential path", gcpPod, "gcp", "GET", "/computeMetadata/v1/instance/service-accounts/default/token", nil, "deny", "gcp-readers", audit.ReasonCredentialPath},
		{"GCP identity is a credential path", gcpPod, "gcp", "GET", "/computeMetadata/v1/instance/service-accounts/default/identity", nil, "deny", "gcp-readers", audit.ReasonCredentialPath},
		{"GCP token with a trailing slash is a credential path too", gcpPod, "gcp", "GET", "/computeMetadata/v1/instance/service-accounts/default/token/", nil, "deny", "gcp-readers", audit.ReasonCredentialPath},
		{"GCP kube-env is a credential path", gcpPod, "gcp", "GET", "/computeMetadata/v1/instance/attributes/kube-env", nil, "deny", "gcp-readers", audit.ReasonCredentialPath},
		{"GCP recursive dump above credentials is stripped", gcpPod, "gcp", "GET", "/computeMetadata/v1/instance/", url.Values{"recursive": {"true"}}, "strip", "gcp-readers", audit.ReasonCredentialsHidden},
		{"GCP service account directory listing is stripped", gcpPod, "gcp", "GET", "/computeMetadata/v1/instance/service-accounts/default/", nil, "strip", "gcp-readers", audit.ReasonCredentialsHidden},
		{"GCP legacy v1beta1 is credentials as a whole", accessor, "gcp", "GET", "/computeMetadata/v1beta1/instance/id", nil, "allow", "accessors", audit.ReasonCredentialsAllowed},
		{"GCP root listing is stripped for non-accessors", gcpPod, "gcp", "GET", "/", nil, "strip", "gcp-readers", audit.ReasonCredentialsHidden},
		{"GCP metadata server mTLS certificates are credentials", gcpPod, "gcp", "GET", "/computeMetadata/v1/instance/credentials/certs", nil, "deny", "gcp-readers", audit.ReasonCredentialPath},
		{"GCP metadata server client key is a credential", gcpPod, "gcp", "GET", "/computeMetadata/v1/instance/credentials/mds-client-certificate", nil, "deny", "gcp-readers", audit.ReasonCredentialPath},
		{"GCP workload certificates are credentials", gcpPod, "gcp", "GET", "/computeMetadata/v1/instance/gce-workload-certificates/workload-identities", nil, "deny", "gcp-readers", audit.ReasonCredentialPath},
		{"GCP workload identities are credentials", gcpPod, "gcp", "GET", "/computeMetadata/v1/instance/workload-identities", nil, "deny", "gcp-readers", audit.ReasonCredentialPath},
		{"GCP PUT is served under guest-attributes", guestAgent, "gcp", "PUT", "/computeMetadata/v1/instance/guest-attributes/hostkeys/ssh-ed25519", nil, "allow", "gcp-hostkeys", audit.ReasonAllowed},
		{"GCP DELETE is served under guest-attributes", guestAgent, "gcp", "DELETE", "/computeMetadata/v1/instance/guest-attributes/hostkeys/ssh-ed25519", nil, "allow", "gcp-hostkeys", audit.ReasonAllowed},
		{"GCP DELETE outside guest-attributes is not served", guestAgent, "gcp", "DELETE", "/computeMetadata/v1/instance/attributes/ssh-keys", nil, "deny", "", audit.ReasonMethod},
		{"GCP PUT outside guest-attributes is not served, whatever a rule says", guestAgent, "gcp", "PUT", "/computeMetadata/v1/instance/attributes/ssh-keys", nil, "deny", "", audit.ReasonMethod},

		// Azure and query constraints.
		{"a query constraint with the listed value allows", billing, "azure", "GET", "/metadata/identity/oauth2/token", url.Values{"client_id": {"00000000-0000-0000-0000-000000000001"}}, "allow", "billing-identity", audit.ReasonCredentialsAllowed},
		{"a query constraint with another value does not allow", billing, "azure", "GET", "/metadata/identity/oauth2/token", url.Values{"client_id": {"00000000-0000-0000-0000-000000000002"}}, "deny", "", audit.ReasonNotAllowed},
		{"a query constraint with the key absent does not allow", billing, "azure", "GET", "/metadata/identity/oauth2/token", nil, "deny", "", audit.ReasonNotAllowed},
		{"an entry pinning client_id refuses a second identity key beside it", billing, "azure", "GET", "/metadata/identity/oauth2/token", idQuery("client_id", clientA, "msi_res_id", "/subscriptions/x"), "deny", "", audit.ReasonNotAllowed},
		{"an entry pinning client_id refuses object_id beside it", billing, "azure", "GET", "/metadata/identity/oauth2/token", idQuery("client_id", clientA, "object_id", "x"), "deny", "", audit.ReasonNotAllowed},
		{"an entry pinning client_id allows keys that pick no identity", billing, "azure", "GET", "/metadata/identity/oauth2/token", idQuery("client_id", clientA, "resource", "https://vault.azure.net", "api-version", "2018-02-01"), "allow", "billing-identity", audit.ReasonCredentialsAllowed},
		{"Azure serves GET only", accessor, "azure", "PUT", "/metadata/instance", nil, "deny", "", audit.ReasonMethod},

		// Default action and modes.
		{"a pod no rule selects gets defaultAction deny", plain, "onprem", "GET", "/", nil, "deny", "", audit.ReasonNoRule},
		{"the field's seed: pod1 is denied", seed1, "onprem", "GET", "/", nil, "deny", "", audit.ReasonNoRule},
		{"the field's seed: pod3 with role metadata-accessor gets through", seed3, "onprem", "GET", "/anything", nil, "allow", "onprem-accessor", audit.ReasonAllowed},
		{"a rule in audit mode turns its pods' denials into audit-deny", trial, "aws", "GET", "/latest/meta-data/hostname", nil, "audit-deny", "", audit.ReasonNotAllowed},
		{"an audit rule still allows what it allows", trial, "aws", "GET", "/latest/meta-data/instance-id", nil, "allow", "node-facts", audit.ReasonAllowed},
		{"a rule in audit mode never forwards a credential read", trial, "aws", "GET", "/latest/meta-data/iam/security-credentials/role", nil, "deny", "", audit.ReasonCredentialPath},
		{"a rule in audit mode never forwards iam/info", trial, "aws", "GET", "/latest/meta-data/iam/info", nil, "deny", "", audit.ReasonCredentialPath},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := p.Decide(tt.id, Request{Endpoint: ep(tt.ep), Method: tt.method, Path: tt.path, Query: tt.query})
			if d.Label().String() != tt.want || d.Rule != tt.rule || d.Reason != tt.reason {
				t.Errorf("Decide(%s %s) = %s rule=%q reason=%s, want %s rule=%q reason=%s",
					tt.method, tt.path, d.Label(), d.Rule, d.Reason, tt.want, tt.rule, tt.reason)
			}
		})
	}
}

func TestDecideDefaultAllowNeverOpensCredentials(t *testing.T) {
	p := mustParse(t, `
apiVersion: metaguard.dev/v1alpha1
kind: Policy
endpoints: [{name: aws, address: "169.254.169.254:80", flavor: aws}]
defaultAction: allow
`)
	ep := p.Endpoints()[0]
	id := pod("web", nil, nil, "")
	tests := []struct {
		method, path, want string
		reason             audit.Reason
	}{
		{"GET", "/latest/meta-data/instance-id", "allow", audit.ReasonDefaultAllow},
		{"HEAD", "/latest/meta-data/instance-id", "allow", audit.ReasonDefaultAllow},
		{"GET", "/latest/meta-data/", "strip", audit.ReasonCredentialsHidden},
		{"GET", "/latest/meta-data/iam/security-credentials/role", "deny", audit.ReasonCredentialPath},
		// A default opens reading only; a write needs a rule naming it.
		{"PUT", "/latest/api/token", "deny", audit.ReasonNoRule},
	}
	for _, tt := range tests {
		d := p.Decide(id, Request{Endpoint: ep, Method: tt.method, Path: tt.path})
		if d.Label().String() != tt.want || d.Reason != tt.reason {
			t.Errorf("%s %s: got %s/%s, want %s/%s", tt.method, tt.path, d.Label(), d.Reason, tt.want, tt.reason)
		}
	}
}

func TestDecidePolicyAuditMode(t *testing.T) {
	p := mustParse(t, `
apiVersion: metaguard.dev/v1alpha1
kind: Policy
mode: audit
endpoints: [{name: aws, address: "169.254.169.254:80", flavor: aws}]
`)
	ep := p.Endpoints()[0]
	web := pod("web", nil, nil, "")
	tests := []struct {
		name, method, path string
		want               string
		action             Action
		reason             audit.Reason
	}{
		{"a denial is forwarded as audit-deny", "GET", "/latest/meta-data/hostname", "audit-deny", Deny, audit.ReasonNoRule},
		{"a listing above credentials is forwarded stripped", "GET", "/latest/meta-data/", "audit-deny", Strip, audit.ReasonNoRule},
		{"a credential read is denied, not forwarded", "GET", "/latest/meta-data/iam/security-credentials/role", "deny", Deny, audit.ReasonCredentialPath},
		{"iam/info is denied, not forwarded", "GET", "/latest/meta-data/iam/info", "deny", Deny, audit.ReasonCredentialPath},
		{"an older API version of a credential is denied too", "GET", "/2016-09-02/meta-data/iam/security-credentials/", "deny", Deny, audit.ReasonCredentialPath},
		{"an unserved method is not a policy question", "DELETE", "/", "deny", Deny, audit.ReasonMethod},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := p.Decide(web, Request{Endpoint: ep, Method: tt.method, Path: tt.path})
			if d.Label().String() != tt.want || d.Action != tt.action || d.Reason != tt.reason {
				t.Errorf("got %s (action %s) reason %s, want %s (action %s) reason %s", d.Label(), d.Action, d.Reason, tt.want, tt.action, tt.reason)
			}
			if d.Forwarded() != (tt.want == "audit-deny") {
				t.Errorf("Forwarded = %v", d.Forwarded())
			}
		})
	}
}

func TestCanReadHidesOnlyUnreadableCredentialEntries(t *testing.T) {
	p := mustParse(t, decidePolicy)
	ep, _ := p.EndpointByName("aws")
	plain := pod("web", nil, nil, "")
	accessor := pod("ops", map[string]string{"role": "metadata-accessor"}, map[string]string{"metaguard.dev/accessors": "true"}, "")
	if !p.CanRead(plain, ep, "/latest/meta-data/hostname") {
		t.Error("a non-credential entry must stay visible")
	}
	if p.CanRead(plain, ep, "/latest/meta-data/iam/") {
		t.Error("iam/ must be hidden from a pod without credentials: allow")
	}
	if !p.CanRead(accessor, ep, "/latest/meta-data/iam/") {
		t.Error("iam/ must stay visible to an accessor")
	}
}

func TestDecideDoesNotAllocate(t *testing.T) {
	p := mustParse(t, decidePolicy)
	ep, _ := p.EndpointByName("aws")
	id := pod("ops", map[string]string{"role": "metadata-accessor"}, map[string]string{"metaguard.dev/accessors": "true"}, "")
	req := Request{Endpoint: ep, Method: "GET", Path: "/latest/meta-data/placement/region"}
	if n := testing.AllocsPerRun(100, func() { p.Decide(id, req) }); n != 0 {
		t.Fatalf("Decide allocates %v times per call, want 0", n)
	}
}

func TestExplainNamesSelectingAndAllowingRules(t *testing.T) {
	p := mustParse(t, decidePolicy)
	ep, _ := p.EndpointByName("aws")
	x := p.Explain(pod("jobs", map[string]string{"tier": "batch"}, nil, "batch-runner"), Request{Endpoint: ep, Method: "GET", Path: "/latest/meta-data/iam/info"})
	if x.Decision.Label() != audit.DecisionDeny || !x.Credential {
		t.Fatalf("got %+v", x)
	}
	if len(x.Selecting) != 2 || x.Selecting[0] != "node-facts" || x.Selecting[1] != "batch-sa" {
		t.Errorf("Selecting = %v, want [node-facts batch-sa]", x.Selecting)
	}
	if len(x.Allowing) != 1 || x.Allowing[0] != "batch-sa" {
		t.Errorf("Allowing = %v, want [batch-sa]", x.Allowing)
	}
	if x.Why == "" {
		t.Error("Why is empty")
	}
}
