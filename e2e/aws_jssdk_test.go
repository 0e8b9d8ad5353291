//go:build e2e

package e2e

import (
	"strings"
	"testing"
	"time"

	"metaguard.dev/metaguard/e2e/sandbox"
)

// jsAWSPolicy is awsPolicy plus a pod that may read credentials from the
// IMDSv2-only mock but may not ask for a token: what the JavaScript SDK
// does on 403 and on 401 shows there.
const jsAWSPolicy = awsPolicy + `  - name: legacy-v1
    podSelector: {matchLabels: {app: legacy}}
    endpoints: [aws-v2only]
    allow:
      - paths: ["/latest/meta-data/iam/**"]
    credentials: allow
`

const (
	awsTokenPath = "/latest/api/token"
	awsCredsPath = "/latest/meta-data/iam/security-credentials/"
)

// TestAWSWithTheJSSDK runs the AWS SDK for JavaScript v3's instance
// metadata credential provider (@smithy/credential-provider-imds, its own
// IMDS code, not the Go SDK's) with Node.js in pods, through the real DNAT
// and proxy, against ec2-metadata-mock.
func TestAWSWithTheJSSDK(t *testing.T) {
	n := startNode(t, jsAWSPolicy)
	accessor := n.addPod(sandbox.PodSpec{Namespace: "ops", Name: "agent", Labels: map[string]string{"role": "metadata-accessor"}})
	web := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "web", Labels: map[string]string{"app": "web"}})
	batch := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "batch", Labels: map[string]string{"app": "batch"}})
	legacy := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "legacy", Labels: map[string]string{"app": "legacy"}})
	env := clientEnv(t)
	v2only := plusEnv(env, "AWS_EC2_METADATA_SERVICE_ENDPOINT=http://169.254.169.250")

	trail := func(t *testing.T, pod *sandbox.Pod, t0 time.Time, want string) {
		t.Helper()
		got := summary(n.waitAuditOf(pod, t0, strings.Count(want, "\n")))
		if got != want {
			t.Errorf("audit trail:\n%s\nwant:\n%s", got, want)
		}
	}
	t.Run("an accessor gets role credentials with an IMDSv2 token", func(t *testing.T) {
		t0 := time.Now()
		r := n.jsClient(accessor, env, "creds")
		if !r.OK || r.AccessKeyID == "" {
			t.Fatalf("%+v", r)
		}
		lines := n.waitAuditOf(accessor, t0, 3)
		if len(lines) != 3 || lines[0].Method != "PUT" || lines[0].Path != awsTokenPath || lines[1].Path != awsCredsPath ||
			!strings.HasPrefix(lines[2].Path, awsCredsPath) || lines[2].Status != 200 {
			t.Errorf("audit trail:\n%s", summary(lines))
		}
	})
	t.Run("an accessor gets credentials from an IMDSv2-only instance", func(t *testing.T) {
		if r := n.jsClient(accessor, v2only, "creds"); !r.OK || r.AccessKeyID == "" {
			t.Fatalf("%+v", r)
		}
	})
	t.Run("a strip pod gets a token but is refused the role, once (no retries by default)", func(t *testing.T) {
		t0 := time.Now()
		r := n.jsClient(web, env, "creds")
		if r.OK || r.Status != 403 || !strings.Contains(r.Error, "Error response received from instance metadata service") {
			t.Fatalf("%+v", r)
		}
		trail(t, web, t0, "PUT "+awsTokenPath+" allow 200\nGET "+awsCredsPath+" deny 403\n")
	})
	t.Run("a denied pod's 403 on the token PUT makes the provider use IMDSv1 from then on, also refused", func(t *testing.T) {
		t0 := time.Now()
		r := n.jsClient(batch, env, "creds", "--calls", "2")
		if r.OK || r.Status != 403 || r.Errors["call1"] == "" || r.Errors["call2"] == "" {
			t.Fatalf("%+v", r)
		}
		trail(t, batch, t0, "PUT "+awsTokenPath+" deny 403\nGET "+awsCredsPath+" deny 403\nGET "+awsCredsPath+" deny 403\n")
	})
	t.Run("with IMDSv1 disabled a denied pod stops after the token PUT", func(t *testing.T) {
		t0 := time.Now()
		r := n.jsClient(batch, env, "creds", "--v1-disabled")
		if r.OK || !strings.Contains(r.Error, "InstanceMetadataV1FallbackError") {
			t.Fatalf("%+v", r)
		}
		trail(t, batch, t0, "PUT "+awsTokenPath+" deny 403\n")
	})
	t.Run("after a 401 on IMDSv1 the provider asks for a token again on its next call", func(t *testing.T) {
		t0 := time.Now()
		r := n.jsClient(legacy, v2only, "creds", "--calls", "2")
		if r.OK || r.Status != 401 {
			t.Fatalf("%+v", r)
		}
		trail(t, legacy, t0, "PUT "+awsTokenPath+" deny 403\nGET "+awsCredsPath+" allow 401\n"+
			"PUT "+awsTokenPath+" deny 403\nGET "+awsCredsPath+" allow 401\n")
	})
}
