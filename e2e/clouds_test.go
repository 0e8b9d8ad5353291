//go:build e2e

package e2e

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"metaguard.dev/metaguard/e2e/fakecloud"
	"metaguard.dev/metaguard/e2e/sandbox"
)

const cloudsPolicy = `apiVersion: metaguard.dev/v1alpha1
kind: Policy
endpoints:
  - {name: gcp, address: "169.254.169.252:80", flavor: gcp}
  - {name: azure, address: "169.254.169.251:80", flavor: azure}
defaultAction: deny
rules:
  - name: gcp-readers
    podSelector: {matchLabels: {app: web}}
    endpoints: [gcp]
    allow:
      - paths: ["/", "/computeMetadata/v1/**"]
  - name: azure-readers
    podSelector: {matchLabels: {app: web}}
    endpoints: [azure]
    allow:
      - paths: ["/metadata/instance", "/metadata/instance/**"]
  - name: billing-identity
    podSelector: {matchLabels: {app: billing}}
    endpoints: [azure]
    allow:
      - paths: ["/metadata/identity/oauth2/token"]
        query: {client_id: ["` + fakecloud.AzureUserClientID1 + `"]}
    credentials: allow
`

var google = map[string]string{"Metadata-Flavor": "Google"}

func TestGCPAndAzure(t *testing.T) {
	n := startNode(t, cloudsPolicy)
	web := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "web", Labels: map[string]string{"app": "web"}})
	billing := n.addPod(sandbox.PodSpec{Namespace: "pay", Name: "billing", Labels: map[string]string{"app": "billing"}})
	const gcp = "http://169.254.169.252"
	const azure = "http://169.254.169.251"

	t.Run("GCP clients' probe of / gets Metadata-Flavor back", func(t *testing.T) {
		r := n.get(web, gcp+"/", nil)
		if r.status != 200 || r.header.Get("Metadata-Flavor") != "Google" {
			t.Fatalf("status %d header %v", r.status, r.header)
		}
	})
	t.Run("required headers pass and X-Forwarded-For never reaches the upstream", func(t *testing.T) {
		if err := n.s.ResetCloudRecords(n.ctx, fakecloud.GCP); err != nil {
			t.Fatal(err)
		}
		if r := n.get(web, gcp+"/computeMetadata/v1/instance/zone", google); r.status != 200 {
			t.Fatalf("zone: %d %q", r.status, r.body)
		}
		if r := n.get(web, gcp+"/computeMetadata/v1/instance/zone", map[string]string{"Metadata-Flavor": "Google", "X-Forwarded-For": "10.9.9.9"}); r.status != 403 {
			t.Fatalf("a request with X-Forwarded-For got %d, want 403", r.status)
		}
		recs, err := n.s.CloudRecords(n.ctx, fakecloud.GCP)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) != 1 {
			t.Fatalf("upstream saw %d requests, want 1 (the XFF one must not be forwarded): %+v", len(recs), recs)
		}
		h := recs[0].Header
		if h.Get("Metadata-Flavor") != "Google" {
			t.Errorf("Metadata-Flavor did not pass: %v", h)
		}
		for _, k := range []string{"X-Forwarded-For", "Forwarded", "Via", "X-Real-Ip"} {
			if _, ok := h[k]; ok {
				t.Errorf("upstream received %s", k)
			}
		}
		if !strings.HasPrefix(recs[0].RemoteAddr, sandbox.HostIP.String()+":") {
			t.Errorf("upstream saw the request from %s, want the node %s", recs[0].RemoteAddr, sandbox.HostIP)
		}
	})
	t.Run("credential paths are stripped from recursive JSON", func(t *testing.T) {
		r := n.get(web, gcp+"/computeMetadata/v1/instance/?recursive=true", google)
		if r.status != 200 {
			t.Fatalf("status %d %q", r.status, r.body)
		}
		if strings.Contains(r.body, "kube-env") || strings.Contains(r.body, "KUBELET_KEY") {
			t.Fatalf("kube-env survived stripping: %s", r.body)
		}
		var v map[string]any
		if err := json.Unmarshal([]byte(r.body), &v); err != nil {
			t.Fatalf("stripped JSON: %v", err)
		}
		if !strings.Contains(r.body, `"id":4520031799277581759`) {
			t.Errorf("a 64-bit instance id lost precision in stripping: %s", r.body)
		}
		if r := n.get(web, gcp+"/computeMetadata/v1/instance/service-accounts/default/token", google); r.status != 403 {
			t.Errorf("token: %d, want 403", r.status)
		}
		l := n.get(web, gcp+"/computeMetadata/v1/instance/service-accounts/default/", google)
		if l.status != 200 || strings.Contains(l.body, "token") || strings.Contains(l.body, "identity") || !strings.Contains(l.body, "email") {
			t.Errorf("service account listing: %d %q", l.status, l.body)
		}
		if r := n.get(web, gcp+"/computeMetadata/v1/instance/?recursive=true&alt=text", google); r.status != 502 || strings.Contains(r.body, "KUBELET") {
			t.Errorf("recursive alt=text holding a multi-line credential: %d %q, want 502 and nothing relayed", r.status, r.body)
		}
	})
	t.Run("a wait_for_change long poll streams the change", func(t *testing.T) {
		type result struct {
			r   response
			dur time.Duration
		}
		done := make(chan result, 1)
		start := time.Now()
		go func() {
			r := n.get(web, gcp+"/computeMetadata/v1/instance/attributes/cluster-name?wait_for_change=true&timeout_sec=30", google)
			done <- result{r, time.Since(start)}
		}()
		time.Sleep(500 * time.Millisecond)
		if err := n.s.SetGCPValue(n.ctx, "/computeMetadata/v1/instance/attributes/cluster-name", "renamed"); err != nil {
			t.Fatal(err)
		}
		select {
		case res := <-done:
			if res.r.status != 200 || res.r.body != "renamed" {
				t.Fatalf("long poll: %d %q", res.r.status, res.r.body)
			}
			if res.dur > 10*time.Second {
				t.Fatalf("long poll took %s: the change did not stream through", res.dur)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("the long poll did not return after the change")
		}
	})
	t.Run("Azure requires Metadata: true end to end and identity is per client id", func(t *testing.T) {
		if err := n.s.ResetCloudRecords(n.ctx, fakecloud.Azure); err != nil {
			t.Fatal(err)
		}
		md := map[string]string{"Metadata": "true"}
		if r := n.get(web, azure+"/metadata/instance?api-version=2021-02-01", md); r.status != 200 || !strings.Contains(r.body, "compute") {
			t.Fatalf("instance: %d %q", r.status, r.body)
		}
		if r := n.get(web, azure+"/metadata/instance?api-version=2021-02-01", nil); r.status != 400 {
			t.Errorf("without Metadata: true: %d, want Azure's 400 (metaguard must not add the header)", r.status)
		}
		tok := azure + "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net&client_id="
		if r := n.get(billing, tok+fakecloud.AzureUserClientID1, md); r.status != 200 || !strings.Contains(r.body, "access_token") {
			t.Errorf("the allowed client id: %d %q", r.status, r.body)
		}
		if r := n.get(billing, tok+fakecloud.AzureUserClientID2, md); r.status != 403 {
			t.Errorf("another client id: %d, want 403", r.status)
		}
		if r := n.get(web, tok+fakecloud.AzureUserClientID1, md); r.status != 403 {
			t.Errorf("a pod without the identity rule: %d, want 403", r.status)
		}
		if r := n.do(web, "PUT", azure+"/metadata/instance?api-version=2021-02-01", md); r.status != 405 {
			t.Errorf("PUT to Azure: %d, want 405", r.status)
		}
		recs, err := n.s.CloudRecords(n.ctx, fakecloud.Azure)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) != 3 || recs[0].Header.Get("Metadata") != "true" || recs[1].Header.Get("Metadata") != "" {
			t.Errorf("Azure saw %d requests: %+v", len(recs), recs)
		}
	})
}
