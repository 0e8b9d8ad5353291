package proxy

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"metaguard.dev/metaguard/proxy/audit"
)

const awsMetaDataListing = "ami-id\nhostname\niam/\nidentity-credentials/\ninstance-id\nplacement/"

func TestStripRemovesCredentialEntriesFromAWSListings(t *testing.T) {
	h := newHarness(t, "aws", func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/latest/meta-data/":
			io.WriteString(w, awsMetaDataListing)
		case "/latest/":
			io.WriteString(w, "dynamic\nmeta-data\nuser-data")
		default:
			io.WriteString(w, "x")
		}
	})
	resp, body := h.do(plainPod, "GET", "/latest/meta-data/", nil)
	want := "ami-id\nhostname\ninstance-id\nplacement/"
	if resp.StatusCode != 200 || body != want {
		t.Fatalf("status %d body %q, want %q", resp.StatusCode, body, want)
	}
	if cl := resp.Header.Get("Content-Length"); cl != strconv.Itoa(len(want)) {
		t.Errorf("Content-Length %s after rewriting, want %d", cl, len(want))
	}
	if ae := h.up.received()[0].Header.Get("Accept-Encoding"); ae != "" {
		t.Errorf("a stripped request asked for an encoded body: %q", ae)
	}

	// The accessor's rule says credentials: allow, so it sees everything.
	_, body = h.do(accessorPod, "GET", "/latest/meta-data/", nil)
	if body != awsMetaDataListing {
		t.Errorf("accessor listing %q, want it untouched", body)
	}
	// The credential path itself is 403, not just hidden.
	resp, _ = h.do(plainPod, "GET", "/latest/meta-data/iam/security-credentials/", nil)
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("credential listing status %d, want 403", resp.StatusCode)
	}
	lines := h.waitAudit(3)
	if got := lines[0].Decision; got != audit.DecisionStrip {
		t.Errorf("audit decision %v, want strip", got)
	}
}

func TestStripExtraCredentialPathsFromListings(t *testing.T) {
	h := newHarnessPolicy(t, "aws", "credentialPaths: [\"/latest/user-data\"]\n", ok("dynamic\nmeta-data\nuser-data"))
	_, body := h.do(plainPod, "GET", "/latest/", nil)
	if body != "dynamic\nmeta-data" {
		t.Fatalf("body %q: user-data must be hidden", body)
	}
}

func TestStripRemovesCredentialsFromGCPRecursiveJSONAndText(t *testing.T) {
	instance := map[string]any{
		"id":         1234,
		"attributes": map[string]any{"kube-env": "KUBELET_KEY: secret", "cluster-name": "prod"},
		"serviceAccounts": map[string]any{
			"default": map[string]any{"email": "sa@x", "token": "ya29.secret", "identity": "eyJsecret", "scopes": []any{"a"}},
		},
		"disks": []any{map[string]any{"deviceName": "boot"}},
	}
	h := newHarness(t, "gcp", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		switch {
		case q.Get("alt") == "text" && q.Get("recursive") == "true":
			io.WriteString(w, "attributes/cluster-name prod\nattributes/kube-env KUBELET_KEY: secret\nMORE: secret\nid 1234\n")
		case q.Get("alt") == "text":
			io.WriteString(w, "aliases\nemail\nidentity\nscopes\ntoken\n")
		case q.Get("recursive") == "true":
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(instance)
		default:
			io.WriteString(w, "aliases\nemail\nidentity\nscopes\ntoken\n")
		}
	})
	gcp := http.Header{"Metadata-Flavor": {"Google"}}

	resp, body := h.do(plainPod, "GET", "/computeMetadata/v1/instance/?recursive=true", gcp)
	if resp.StatusCode != 200 {
		t.Fatalf("recursive: status %d", resp.StatusCode)
	}
	if strings.Contains(body, "secret") || strings.Contains(body, "kube-env") || strings.Contains(body, "token") || strings.Contains(body, "identity") {
		t.Errorf("recursive JSON still names a credential: %s", body)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("stripped JSON does not parse: %v", err)
	}
	if got["attributes"].(map[string]any)["cluster-name"] != "prod" || got["serviceAccounts"].(map[string]any)["default"].(map[string]any)["email"] != "sa@x" {
		t.Errorf("stripping removed more than credentials: %s", body)
	}
	if cl := resp.Header.Get("Content-Length"); cl != strconv.Itoa(len(body)) {
		t.Errorf("Content-Length %s, body %d bytes", cl, len(body))
	}

	_, body = h.do(plainPod, "GET", "/computeMetadata/v1/instance/service-accounts/default/", gcp)
	if body != "aliases\nemail\nscopes\n" {
		t.Errorf("listing %q: token and identity must be hidden", body)
	}
	_, body = h.do(plainPod, "GET", "/computeMetadata/v1/instance/service-accounts/default/?alt=text", gcp)
	if body != "aliases\nemail\nscopes\n" {
		t.Errorf("alt=text listing %q: token and identity must be hidden", body)
	}
	// A recursive text dump with a credential in it cannot be cut safely
	// (a value may span lines): refused, never relayed.
	resp, body = h.do(plainPod, "GET", "/computeMetadata/v1/instance/?recursive=true&alt=text", gcp)
	if resp.StatusCode != http.StatusBadGateway || strings.Contains(body, "secret") {
		t.Errorf("recursive alt=text with a credential: status %d body %q", resp.StatusCode, body)
	}
	// An accessor with credentials: allow gets it whole.
	_, body = h.do(accessorPod, "GET", "/computeMetadata/v1/instance/?recursive=true", gcp)
	if !strings.Contains(body, "ya29.secret") {
		t.Errorf("accessor recursive dump was stripped: %s", body)
	}
}

func TestStripFailsClosedOnBodiesItCannotRead(t *testing.T) {
	h := newHarness(t, "gcp", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"attributes": {"kube-env": "secret"`)
	})
	resp, body := h.do(plainPod, "GET", "/computeMetadata/v1/instance/?recursive=true", http.Header{"Metadata-Flavor": {"Google"}})
	if resp.StatusCode != http.StatusBadGateway || strings.Contains(body, "secret") {
		t.Fatalf("truncated JSON: status %d body %q, want 502 and nothing relayed", resp.StatusCode, body)
	}
	h2 := newHarness(t, "aws", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Encoding", "gzip")
		io.WriteString(w, "\x1f\x8bnot-really")
	})
	resp, _ = h2.do(plainPod, "GET", "/latest/meta-data/", nil)
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("encoded listing: status %d, want 502", resp.StatusCode)
	}
}

func TestStripListingUnit(t *testing.T) {
	hidden := func(p string) bool { return !strings.Contains(p, "/iam/") }
	tests := []struct{ in, dir, want string }{
		{"a\niam/\nb", "/latest/meta-data/", "a\nb"},
		{"a\niam/\nb\n", "/latest/meta-data", "a\nb\n"},
		{"iam/", "/latest/meta-data/", ""},
		{"", "/latest/meta-data/", ""},
		{"a\r\niam/\r\n", "/latest/meta-data/", "a\r\n"},
	}
	for _, tt := range tests {
		got, _ := StripListing([]byte(tt.in), tt.dir, hidden)
		if string(got) != tt.want {
			t.Errorf("StripListing(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestARecursiveTextDumpIsRefusedWhateverItHolds(t *testing.T) {
	// Refusing only the dumps that held a credential would tell the pod
	// that one exists; a recursive answer that is not JSON is refused
	// whole, with or without one.
	for _, body := range []string{"computeMetadata/\n", "attributes/kube-env secret\nid 1\n"} {
		h := newHarness(t, "gcp", ok(body))
		resp, got := h.do(plainPod, "GET", "/?recursive=true", http.Header{"Metadata-Flavor": {"Google"}})
		if resp.StatusCode != http.StatusBadGateway || strings.Contains(got, "secret") {
			t.Fatalf("%q: status %d body %q, want 502", body, resp.StatusCode, got)
		}
	}
}
