//go:build e2e

package e2e

import (
	"strings"
	"testing"
	"time"

	"metaguard.dev/metaguard/e2e/fakecloud"
	"metaguard.dev/metaguard/e2e/sandbox"
	"metaguard.dev/metaguard/proxy/audit"
)

const azureClientPolicy = `apiVersion: metaguard.dev/v1alpha1
kind: Policy
endpoints:
  - {name: imds, address: "169.254.169.254:80", flavor: azure}
defaultAction: deny
rules:
  - name: node-facts
    podSelector: {matchLabels: {app: web}}
    allow:
      - paths: ["/metadata/instance", "/metadata/instance/**"]
  - name: billing-identity
    podSelector: {matchLabels: {app: billing}}
    allow:
      - paths: ["/metadata/identity/oauth2/token"]
        query: {client_id: ["` + fakecloud.AzureUserClientID1 + `"]}
    credentials: allow
  - name: ops-identities
    podSelector: {matchLabels: {app: ops}}
    allow:
      - paths: ["/metadata/identity/oauth2/token"]
    credentials: allow
`

const azureTokenPath = "/metadata/identity/oauth2/token"

// TestAzureManagedIdentityLibrary runs azidentity's
// ManagedIdentityCredential and DefaultAzureCredential in pods, through
// the real DNAT and proxy, against the Azure fake on 169.254.169.254 (the
// address azidentity hard-codes). Retries that would wait seconds use
// short delays; the defaults are exercised where no retry happens.
func TestAzureManagedIdentityLibrary(t *testing.T) {
	n := startNodeWith(t, sandbox.Options{MetadataCloud: fakecloud.Azure}, azureClientPolicy)
	billing := n.addPod(sandbox.PodSpec{Namespace: "pay", Name: "billing", Labels: map[string]string{"app": "billing"}})
	ops := n.addPod(sandbox.PodSpec{Namespace: "ops", Name: "agent", Labels: map[string]string{"app": "ops"}})
	web := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "web", Labels: map[string]string{"app": "web"}})
	batch := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "batch", Labels: map[string]string{"app": "batch"}})
	env := clientEnv(t)
	const vault = "https://vault.azure.net"

	t.Run("a pod pinned to client id A gets A's token", func(t *testing.T) {
		n.resetRecords(fakecloud.Azure)
		r := n.client(billing, env, "azure-token", "-client-id", fakecloud.AzureUserClientID1, vault)
		if !r.OK || !strings.Contains(r.Values["token"], "e2e-fake-azure-token-for-"+fakecloud.AzureUserClientID1) {
			t.Fatalf("%+v", r)
		}
		recs := n.records(fakecloud.Azure)
		if len(recs) != 1 {
			t.Fatalf("upstream saw %d requests: %+v", len(recs), recs)
		}
		q, h := recs[0].RawQuery, recs[0].Header
		for _, want := range []string{"api-version=2018-02-01", "client_id=" + fakecloud.AzureUserClientID1, "resource=https%3A%2F%2Fvault.azure.net"} {
			if !strings.Contains(q, want) {
				t.Errorf("query %q lacks %s", q, want)
			}
		}
		if h.Get("Metadata") != "true" || h.Get("X-Forwarded-For") != "" {
			t.Errorf("headers %v", h)
		}
	})
	t.Run("the pinned pod is refused client id B and every other selector, at once (403 is not retried)", func(t *testing.T) {
		n.resetRecords(fakecloud.Azure)
		for _, sel := range [][]string{
			{"-client-id", fakecloud.AzureUserClientID2},
			{"-resource-id", fakecloud.AzureUserResourceID1},
			{"-object-id", fakecloud.AzureUserObjectID1},
			{}, // the system-assigned identity
		} {
			r := n.client(billing, env, append(append([]string{"azure-token"}, sel...), vault)...)
			if r.OK || r.Status != 403 || !strings.Contains(r.Errors["token"], "metaguard: denied GET "+azureTokenPath+" for pod pay/billing") {
				t.Errorf("%v: %+v", sel, r)
			}
			// azidentity's IMDS defaults retry 404, 410, 429 and 5xx after
			// 2 s; a 403 ends the call at once.
			if r.ElapsedMS > 1500 {
				t.Errorf("%v took %d ms: a 403 must not be retried", sel, r.ElapsedMS)
			}
		}
		if recs := n.records(fakecloud.Azure); len(recs) != 0 {
			t.Errorf("refused requests reached the upstream: %+v", recs)
		}
	})
	t.Run("a pod without a credentials rule and a pod without any rule are refused", func(t *testing.T) {
		for _, pod := range []*sandbox.Pod{web, batch} {
			r := n.client(pod, env, "azure-token", vault)
			if r.OK || r.Status != 403 || !strings.Contains(r.Errors["token"], "metaguard: denied GET "+azureTokenPath+" for pod "+pod.String()) {
				t.Errorf("%s: %+v", pod, r)
			}
		}
	})
	t.Run("DefaultAzureCredential probes IMDS, takes metaguard's answer as IMDS being there, and gets the token", func(t *testing.T) {
		n.resetRecords(fakecloud.Azure)
		t0 := time.Now()
		r := n.client(billing, plusEnv(env, "AZURE_CLIENT_ID="+fakecloud.AzureUserClientID1), "azure-token", "-dac", vault)
		if !r.OK || !strings.Contains(r.Values["token"], fakecloud.AzureUserClientID1) {
			t.Fatalf("%+v", r)
		}
		lines := n.waitAuditOf(billing, t0, 2)
		// The probe is a GET of the token endpoint without query or
		// Metadata header: the pin refuses it, which tells azidentity that
		// something answers; then the real request is allowed.
		if len(lines) != 2 || lines[0].Decision != audit.DecisionDeny || len(lines[0].QueryKeys) != 0 || lines[1].Decision != audit.DecisionAllow || lines[1].Status != 200 {
			t.Errorf("audit trail of the probe and the token request:\n%s", summary(lines))
		}
	})
	t.Run("DefaultAzureCredential in a denied pod stops at metaguard's refusal", func(t *testing.T) {
		r := n.client(batch, env, "azure-token", "-dac", vault)
		if r.OK || !strings.Contains(r.Errors["token"], "metaguard: denied") {
			t.Errorf("%+v", r)
		}
	})
	t.Run("throttling and server errors pass through metaguard to azidentity's retries, Retry-After honoured", func(t *testing.T) {
		n.resetRecords(fakecloud.Azure)
		for _, f := range []fakecloud.Fault{
			{Path: azureTokenPath, Status: 429, Count: 1, RetryAfter: "1"},
			{Path: azureTokenPath, Status: 500, Count: 1},
		} {
			if err := n.s.AddCloudFault(n.ctx, fakecloud.Azure, f); err != nil {
				t.Fatal(err)
			}
		}
		r := n.client(ops, env, "azure-token", "-retry-delay", "50ms", "-client-id", fakecloud.AzureUserClientID2, vault)
		if !r.OK || !strings.Contains(r.Values["token"], fakecloud.AzureUserClientID2) {
			t.Fatalf("%+v", r)
		}
		recs := n.records(fakecloud.Azure)
		if len(recs) != 3 || recs[0].Status != 429 || recs[1].Status != 500 || recs[2].Status != 200 {
			t.Errorf("upstream saw %+v", recs)
		}
		if r.ElapsedMS < 1000 {
			t.Errorf("the retry after a 429 with Retry-After: 1 came after %d ms", r.ElapsedMS)
		}
	})
	t.Run("an identity the VM lacks is IMDS's 400, relayed and not retried", func(t *testing.T) {
		n.resetRecords(fakecloud.Azure)
		r := n.client(ops, env, "azure-token", "-client-id", "00000000-0000-0000-0000-00000000dead", vault)
		if r.OK || r.Status != 400 || !strings.Contains(r.Errors["token"], "the requested identity isn't assigned to this resource") {
			t.Errorf("%+v", r)
		}
		if recs := n.records(fakecloud.Azure); len(recs) != 1 {
			t.Errorf("upstream saw %d requests", len(recs))
		}
	})
}
