package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"metaguard.dev/metaguard/proxy/audit"
	"metaguard.dev/metaguard/proxy/policy"
)

// wireRecorder is an upstream transport that remembers the request-target
// it would put on the wire and answers 200.
type wireRecorder struct{ sent []string }

func (w *wireRecorder) RoundTrip(r *http.Request) (*http.Response, error) {
	w.sent = append(w.sent, r.URL.RequestURI())
	return &http.Response{StatusCode: 200, Header: http.Header{}, Body: io.NopCloser(strings.NewReader("ok")), Request: r}, nil
}

const fuzzPolicy = `
apiVersion: metaguard.dev/v1alpha1
kind: Policy
endpoints:
  - {name: aws, address: "169.254.169.254:80", flavor: aws}
  - {name: gcp, address: "169.254.169.252:80", flavor: gcp}
  - {name: generic, address: "192.168.100.21:32000", flavor: generic}
rules:
  - name: only-allowed
    allow:
      - methods: [GET, HEAD, PUT]
        paths: ["/allowed/**"]
`

// FuzzForwardedPathIsTheMatchedPath shows that no request makes the proxy
// forward a path other than the one the policy matched: whatever the
// request-target, either nothing is forwarded, or the request-target on
// the wire is exactly the audited (matched) path plus the validated query,
// and that path is canonical and allowed.
func FuzzForwardedPathIsTheMatchedPath(f *testing.F) {
	for _, seed := range []string{
		"/allowed/x", "/allowed/", "/allowed", "/allowed/../secret", "/allowed/%2e%2e/secret",
		"/allowed%2F..%2Fsecret", "/allowed/x?recursive=true", "/allowed/x?a=%2F&b=1",
		"http://169.254.169.254/allowed/x", "*", "/allowed\\..\\secret", "/allowed/;/../secret",
		"/allowed/x#frag", "/allowed//secret", "/allowed/\xc0\xae\xc0\xae/secret", "/ALLOWED/x",
		"/allowed/x?alt=text;recursive=true", "/allowed/a*b", "/allowed/a'b", "//allowed/x",
	} {
		for _, m := range []string{"GET", "PUT", "HEAD", "CONNECT", "DELETE"} {
			for ep := uint8(0); ep < 3; ep++ {
				f.Add(m, seed, ep)
			}
		}
	}
	pol, err := policy.Parse("fuzz", []byte(fuzzPolicy))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, method, target string, which uint8) {
		raw := method + " " + target + " HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n"
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
		if err != nil {
			return // net/http never hands this to a handler
		}
		ep := pol.Endpoints()[int(which)%len(pol.Endpoints())]
		wire := &wireRecorder{}
		var auditLog bytes.Buffer
		aw, err := audit.NewWriter(&auditLog, audit.Options{})
		if err != nil {
			t.Fatal(err)
		}
		s, err := New(Config{
			Policy:     func() *policy.Policy { return pol },
			Identities: pods{netip.MustParseAddr("10.0.0.1"): testPods[plainPod]},
			Transport:  wire,
			Audit:      aw,
		})
		if err != nil {
			t.Fatal(err)
		}
		req.RemoteAddr = "10.0.0.1:40000"
		ctx := context.WithValue(context.Background(), connKey{}, connInfo{dst: ep.Addr})
		s.ServeHTTP(httptest.NewRecorder(), req.WithContext(ctx))

		if len(wire.sent) == 0 {
			return
		}
		var line struct{ Path, Decision string }
		if err := json.Unmarshal(auditLog.Bytes(), &line); err != nil {
			t.Fatalf("audit line: %v", err)
		}
		sentPath, _, _ := strings.Cut(wire.sent[0], "?")
		if sentPath != line.Path {
			t.Fatalf("target %q: forwarded path %q, but the policy matched %q", target, sentPath, line.Path)
		}
		if why := policy.CanonicalPath(sentPath); why != "" {
			t.Fatalf("target %q: forwarded a non-canonical path %q (%s)", target, sentPath, why)
		}
		if !strings.HasPrefix(sentPath, "/allowed/") && sentPath != "/allowed" {
			t.Fatalf("target %q: forwarded %q, which no rule allows (decision %s)", target, sentPath, line.Decision)
		}
	})
}

// FuzzStripNeverLeaksAHiddenEntry: whatever a listing or JSON dump holds,
// no entry the keep function refuses survives stripping.
func FuzzStripNeverLeaksAHiddenEntry(f *testing.F) {
	f.Add([]byte("ami-id\niam/\ninstance-id"), false)
	f.Add([]byte(`{"attributes":{"kube-env":"x","a":"b"},"serviceAccounts":{"default":{"token":"t"}}}`), true)
	f.Add([]byte(`[{"kube-env":1},{"a":{"kube-env":2}}]`), true)
	f.Add([]byte("kube-env\r\n kube-env \n"), false)
	hidden := func(p string) bool { return !strings.Contains(p, "kube-env") && !strings.Contains(p, "/token") }
	f.Fuzz(func(t *testing.T, body []byte, isJSON bool) {
		if isJSON {
			out, _, err := StripJSON(body, "/computeMetadata/v1/instance/", hidden)
			if err != nil {
				return
			}
			if bytes.Contains(out, []byte(`"kube-env":`)) || bytes.Contains(out, []byte(`"token":`)) {
				t.Fatalf("StripJSON(%q) kept a hidden key: %q", body, out)
			}
			return
		}
		out, _ := StripListing(body, "/computeMetadata/v1/instance/attributes/", hidden)
		for _, line := range strings.Split(string(out), "\n") {
			if strings.TrimSpace(line) == "kube-env" {
				t.Fatalf("StripListing(%q) kept a hidden entry: %q", body, out)
			}
		}
	})
}
