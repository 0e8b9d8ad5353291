//go:build e2e

package e2e

import (
	"strings"
	"testing"
	"time"

	"metaguard.dev/metaguard/e2e/fakecloud"
	"metaguard.dev/metaguard/e2e/sandbox"
)

// gcpClientPolicy is the shape of the shipped GCP policy: node facts for
// web pods (credential entries stripped), tokens for uploaders, nothing
// for the rest.
const gcpClientPolicy = `apiVersion: metaguard.dev/v1alpha1
kind: Policy
endpoints:
  - {name: gce, address: "169.254.169.254:80", flavor: gcp}
  - {name: gce-v6, address: "[fd20:ce::254]:80", flavor: gcp}
defaultAction: deny
rules:
  - name: node-facts
    podSelector: {matchLabels: {app: web}}
    allow:
      - paths: ["/", "/computeMetadata/v1/**"]
  - name: uploader-token
    podSelector: {matchLabels: {app: uploader}}
    allow:
      - paths: ["/", "/computeMetadata/v1/**"]
    credentials: allow
`

// TestGCPMetadataLibrary runs cloud.google.com/go/compute/metadata and
// golang.org/x/oauth2/google's Application Default Credentials in pods,
// through the real DNAT and proxy, against the GCP fake on
// 169.254.169.254 (the address the library hard-codes).
func TestGCPMetadataLibrary(t *testing.T) {
	n := startNodeWith(t, sandbox.Options{MetadataCloud: fakecloud.GCP}, gcpClientPolicy)
	uploader := n.addPod(sandbox.PodSpec{Namespace: "media", Name: "uploader", Labels: map[string]string{"app": "uploader"}})
	web := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "web", Labels: map[string]string{"app": "web"}})
	batch := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "batch", Labels: map[string]string{"app": "batch"}})
	env := clientEnv(t)
	// A resolver that never answers leaves OnGCE to the library's HTTP
	// probe alone, so the probe is what these tests see.
	n.quirks(fakecloud.GCP, fakecloud.Quirks{DNSSilent: true})

	t.Run("an allowed pod detects GCE from the HTTP probe and reads every fact", func(t *testing.T) {
		n.resetRecords(fakecloud.GCP)
		r := n.client(uploader, env, "gcp-facts")
		want := map[string]string{
			"on_gce": "true", "project_id": "metaguard-e2e", "numeric_project_id": "123456789012", "zone": "us-central1-a",
			"instance_id": "4520031799277581759", "instance_name": "node-a", "hostname": "node-a.c.metaguard-e2e.internal",
			"internal_ip": "172.31.0.1", "instance_attributes": "cluster-location,cluster-name,kube-env",
			"instance_tags": "gke-e2e-node,http-server", "cluster_name": "e2e",
		}
		for k, v := range want {
			if r.Values[k] != v {
				t.Errorf("%s = %q, want %q (errors: %v)", k, r.Values[k], v, r.Errors)
			}
		}
		probe := n.records(fakecloud.GCP)[0]
		if probe.Path != "/" || probe.Header.Get("User-Agent") != "gcloud-golang/0.1" || probe.Header.Get("Metadata-Flavor") != "" ||
			probe.Host != "169.254.169.254" {
			t.Errorf("the library's probe reached the upstream as %+v", probe)
		}
	})
	t.Run("DNS to the metadata server passes metaguard, as GCE's resolver", func(t *testing.T) {
		n.quirks(fakecloud.GCP, fakecloud.Quirks{})
		defer n.quirks(fakecloud.GCP, fakecloud.Quirks{DNSSilent: true})
		out, err := n.s.ExecInPodWith(n.ctx, batch, env, "getent", "ahostsv4", "metadata.google.internal")
		if err != nil || !strings.HasPrefix(string(out), "169.254.169.254 ") {
			t.Fatalf("a denied pod resolving metadata.google.internal: %q %v", out, err)
		}
	})
	t.Run("an allowed pod gets a token through Application Default Credentials", func(t *testing.T) {
		n.resetRecords(fakecloud.GCP)
		r := n.client(uploader, env, "gcp-token")
		if !r.OK || !strings.HasPrefix(r.Values["token"], "ya29.e2e-fake-token-") || r.Values["project_id"] != "metaguard-e2e" {
			t.Fatalf("gcp-token: %+v", r)
		}
		var saw bool
		for _, rec := range n.records(fakecloud.GCP) {
			saw = saw || rec.Path == "/computeMetadata/v1/instance/service-accounts/default/token" &&
				rec.RawQuery == "scopes=https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fcloud-platform"
		}
		if !saw {
			t.Errorf("the token request with its scopes never reached the upstream: %+v", n.records(fakecloud.GCP))
		}
	})
	t.Run("a strip pod reads facts but no credential and is refused a token with metaguard's reason", func(t *testing.T) {
		facts := n.client(web, env, "gcp-facts")
		if facts.Values["on_gce"] != "true" || facts.Values["project_id"] != "metaguard-e2e" || len(facts.Errors) != 0 {
			t.Fatalf("facts: %+v", facts)
		}
		if facts.Values["instance_attributes"] != "cluster-location,cluster-name" {
			t.Errorf("instance attributes %q: kube-env must be stripped", facts.Values["instance_attributes"])
		}
		tok := n.client(web, env, "gcp-token")
		if tok.OK || tok.Status != 403 || !strings.Contains(tok.Errors["token"], "compute: Received 403 `metaguard: denied GET "+
			"/computeMetadata/v1/instance/service-accounts/default/token for pod shop/web: credential-path") {
			t.Fatalf("token: %+v", tok)
		}
		get := n.client(web, env, "gcp-get", "instance/service-accounts/default/", "instance/?recursive=true", "instance/attributes/")
		listing, dump := get.Values["instance/service-accounts/default/"], get.Values["instance/?recursive=true"]
		if !strings.Contains(listing, "email") || strings.Contains(listing, "token") || strings.Contains(listing, "identity") {
			t.Errorf("service account listing %q", listing)
		}
		if !strings.Contains(dump, `"serviceAccounts"`) || strings.Contains(dump, "kube-env") || strings.Contains(dump, "KUBELET") {
			t.Errorf("recursive dump %q", dump)
		}
		if a := get.Values["instance/attributes/"]; strings.Contains(a, "kube-env") || !strings.Contains(a, "cluster-name") {
			t.Errorf("attribute listing %q", a)
		}
	})
	t.Run("a denied pod's library errors carry metaguard's refusal and are not retried", func(t *testing.T) {
		n.resetRecords(fakecloud.GCP)
		t0 := time.Now()
		r := n.client(batch, env, "gcp-get", "project/project-id")
		if r.OK || r.Status != 403 || !strings.Contains(r.Errors["project/project-id"], "metaguard: denied GET /computeMetadata/v1/project/project-id for pod shop/batch") {
			t.Fatalf("%+v", r)
		}
		if recs := n.records(fakecloud.GCP); len(recs) != 0 {
			t.Errorf("a denied pod reached the upstream: %+v", recs)
		}
		if lines := n.waitAuditOf(batch, t0, 1); len(lines) != 1 {
			t.Errorf("the library retried a 403:\n%s", summary(lines))
		}
	})
	t.Run("Subscribe follows a change through metaguard with wait_for_change and last_etag", func(t *testing.T) {
		n.resetRecords(fakecloud.GCP)
		const attr = "/computeMetadata/v1/instance/attributes/cluster-name"
		done := make(chan sandbox.PodClientResult, 1)
		go func() {
			res, err := n.s.PodClientWith(n.ctx, web, env, "-timeout", "30s", "gcp-subscribe", "instance/attributes/cluster-name")
			if err != nil {
				res.Error = err.Error()
			}
			done <- res
		}()
		n.waitParked(fakecloud.GCP)
		if err := n.s.SetGCPValue(n.ctx, attr, "renamed"); err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-done:
			if !r.OK || r.Values["initial"] != "e2e" || r.Values["changed"] != "renamed" {
				t.Fatalf("%+v", r)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("the subscription never saw the change")
		}
		var wait string
		for _, rec := range n.records(fakecloud.GCP) {
			if strings.Contains(rec.RawQuery, "wait_for_change=true") {
				wait = rec.RawQuery
			}
		}
		if !strings.Contains(wait, "last_etag=") {
			t.Errorf("the long poll reached the upstream as %q, want last_etag", wait)
		}
	})
	t.Run("GCE's IPv6 metadata address is guarded the same way", func(t *testing.T) {
		const v6 = "http://[fd20:ce::254]/computeMetadata/v1/project/project-id"
		if r := n.get(web, v6, google); r.status != 200 || r.body != "metaguard-e2e" {
			t.Errorf("web pod over IPv6: %d %q", r.status, r.body)
		}
		if r := n.get(batch, v6, google); r.status != 403 {
			t.Errorf("denied pod over IPv6: %d %q", r.status, r.body)
		}
	})

	t.Run("a strip pod's alt=json listing hides token and identity", func(t *testing.T) {
		r := n.client(web, env, "gcp-get", "instance/service-accounts/default/?alt=json")
		if l := r.Values["instance/service-accounts/default/?alt=json"]; !r.OK || strings.Contains(l, "token") || strings.Contains(l, "identity") {
			t.Errorf("alt=json listing: %+v", r)
		}
	})
	t.Run("a Range on a stripped listing never returns unstripped bytes, from an upstream that honours Range", func(t *testing.T) {
		n.quirks(fakecloud.GCP, fakecloud.Quirks{DNSSilent: true, HonourRange: true})
		defer n.quirks(fakecloud.GCP, fakecloud.Quirks{DNSSilent: true})
		r := n.get(web, "http://169.254.169.254/computeMetadata/v1/instance/service-accounts/default/",
			map[string]string{"Metadata-Flavor": "Google", "Range": "bytes=0-4096"})
		if strings.Contains(r.body, "token") || strings.Contains(r.body, "identity") {
			t.Errorf("a Range request to an upstream that honours Range: %d %q", r.status, r.body)
		}
	})

	// What metaguard must change for these clients; it fails until it does.
	t.Run("a denied pod's OnGCE is true, so its error names metaguard, not missing credentials", func(t *testing.T) {
		r := n.client(batch, env, "gcp-token")
		if r.OK || !strings.Contains(r.Errors["credentials"]+r.Errors["token"], "metaguard") {
			t.Errorf("Application Default Credentials in a denied pod: %+v\n"+
				"metaguard's 403 on GET / has no Metadata-Flavor: Google, so the library decides it is not on GCE and says "+
				"\"could not find default credentials\" instead of relaying the refusal", r)
		}
	})
}
