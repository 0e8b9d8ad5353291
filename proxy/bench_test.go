package proxy

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"metaguard.dev/metaguard/proxy/policy"
)

func benchPolicy(b *testing.B) *policy.Policy {
	p, err := policy.Parse("bench", []byte(strings.NewReplacer("UPSTREAM", "169.254.169.254:80", "FLAVOR", "aws", "EXTRA", "").Replace(testPolicy)))
	if err != nil {
		b.Fatal(err)
	}
	return p
}

func BenchmarkCanonicalize(b *testing.B) {
	ep := benchPolicy(b).Endpoints()[0]
	for _, target := range []string{"/latest/meta-data/instance-id", "/latest/meta-data/placement/availability-zone"} {
		r := httptest.NewRequest("GET", target, nil)
		r.RequestURI = target
		b.Run(strings.ReplaceAll(target, "/", "_"), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Canonicalize(r, ep); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	gcp, _ := policy.Parse("gcp", []byte(strings.NewReplacer("UPSTREAM", "169.254.169.254:80", "FLAVOR", "gcp", "EXTRA", "").Replace(testPolicy)))
	target := "/computeMetadata/v1/instance/?recursive=true&alt=json&wait_for_change=true&timeout_sec=60"
	r := httptest.NewRequest("GET", target, nil)
	r.RequestURI = target
	b.Run("gcp_with_query", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := Canonicalize(r, gcp.Endpoints()[0]); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkStrip(b *testing.B) {
	hide := func(p string) bool { return !strings.Contains(p, "/iam") }
	listing := []byte(strings.Repeat("entry\n", 30) + "iam/\nplacement/")
	b.Run("aws_listing", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			StripListing(listing, "/latest/meta-data/", hide)
		}
	})
	doc := []byte(`{"attributes":{"kube-env":"x","cluster-name":"c"},"id":4520031799277581759,"serviceAccounts":{"default":{"email":"e","scopes":["a","b"]}},"zone":"projects/1/zones/z"}`)
	hideGCP := func(p string) bool { return !strings.HasSuffix(p, "/kube-env") }
	b.Run("gcp_recursive_json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, _, err := StripJSON(doc, "/computeMetadata/v1/instance/", hideGCP); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// staticTransport answers every forwarded request at once, so the
// benchmark measures the proxy's own work: no network, no upstream.
type staticTransport struct{ body string }

func (s staticTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: 200, ProtoMajor: 1, ProtoMinor: 1, ContentLength: int64(len(s.body)),
		Header: http.Header{"Content-Type": {"text/plain"}}, Body: io.NopCloser(strings.NewReader(s.body)), Request: r}, nil
}

// BenchmarkServeHTTP is one request through every stage (canonicalise,
// identify, decide, forward or strip or deny, audit, count) in process.
func BenchmarkServeHTTP(b *testing.B) {
	pol := benchPolicy(b)
	ep := pol.Endpoints()[0]
	cases := []struct{ name, target, body string }{
		{"allow", "/latest/meta-data/instance-id", "i-0123456789abcdef0"},
		{"strip", "/latest/meta-data/", awsMetaDataListing},
		{"deny", "/latest/meta-data/iam/info", ""},
	}
	for _, c := range cases {
		s, err := New(Config{Policy: func() *policy.Policy { return pol }, Identities: testPods, Transport: staticTransport{c.body}})
		if err != nil {
			b.Fatal(err)
		}
		ctx := context.WithValue(context.Background(), connKey{}, connInfo{dst: ep.Addr})
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				r := httptest.NewRequest("GET", c.target, nil).WithContext(ctx)
				r.RequestURI = c.target
				r.RemoteAddr = netip.AddrPortFrom(plainPod, 40000).String()
				w := httptest.NewRecorder()
				s.ServeHTTP(w, r)
				if w.Code != 200 && w.Code != 403 {
					b.Fatalf("status %d", w.Code)
				}
			}
		})
	}
}
