package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"metaguard.dev/metaguard/identity"
	"metaguard.dev/metaguard/proxy"
	"metaguard.dev/metaguard/proxy/policy"
)

// These benchmarks drive the proxy package through its exported API only:
// a whole request through a real proxy.Server on a loopback listener to a
// real upstream, the kernel's TCP included (proxy's own benchmarks call the
// handler in process). They include the client's and the upstream's work
// in the same process; BenchmarkLoopbackDirect is that work alone, so that
// the proxy's own cost per request is the difference.

var benchID = identity.Identity{
	Namespace: "bench", Name: "load", UID: "0f6d5a0e-1111-4c6b-9a7e-0d4f1b2c3a4d", ServiceAccount: "default",
	Labels:          map[string]string{"app": "load", "pod-template-hash": "abc123"},
	NamespaceLabels: map[string]string{"kubernetes.io/metadata.name": "bench"},
}

// benchPolicy is loadPolicy with the endpoint on addr.
func benchPolicy(tb testing.TB, addr string) *policy.Policy {
	tb.Helper()
	doc := strings.Replace(strings.Replace(loadPolicy, "169.254.169.249:80", addr, 1), "  - {name: mock, address: \"169.254.169.254:80\", flavor: aws}\n", "", 1)
	p, err := policy.Parse("bench", []byte(doc))
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// loopback is an upstream, a proxy.Server in front of it, and a
// keep-alive client, all on 127.0.0.1.
type loopback struct {
	upstream, proxy string
	client          *http.Client
}

func newLoopback(b *testing.B) *loopback {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		switch r.URL.Path {
		case pathAllowed:
			io.WriteString(w, instanceID)
		case pathListing:
			io.WriteString(w, metaListing+"\n")
		default:
			http.NotFound(w, r)
		}
	}))
	b.Cleanup(up.Close)
	upAddr := netip.MustParseAddrPort(up.Listener.Addr().String())
	pol := benchPolicy(b, upAddr.String())
	srv, err := proxy.New(proxy.Config{
		Policy: func() *policy.Policy { return pol },
		Identities: identity.ResolverFunc(func(context.Context, netip.Addr) (identity.Identity, error) {
			return benchID, nil
		}),
		// Every connection is "bound for" the endpoint, as SO_ORIGINAL_DST
		// would say after the DNAT.
		OriginalDst: func(net.Conn) (netip.AddrPort, error) { return upAddr, nil },
	})
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	b.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
	})
	return &loopback{
		upstream: up.Listener.Addr().String(),
		proxy:    ln.Addr().String(),
		client:   &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 8, DisableCompression: true}},
	}
}

func (l *loopback) get(b *testing.B, addr, path string, want int) {
	resp, err := l.client.Get("http://" + addr + path)
	if err != nil {
		b.Fatal(err)
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != want {
		b.Fatalf("GET %s: %d (%v), want %d", path, resp.StatusCode, err, want)
	}
}

// BenchmarkLoopbackDirect is the client and upstream alone: the floor the
// proxied benchmarks below stand on.
func BenchmarkLoopbackDirect(b *testing.B) {
	l := newLoopback(b)
	b.ReportAllocs()
	for b.Loop() {
		l.get(b, l.upstream, pathAllowed, 200)
	}
}

func BenchmarkLoopbackProxy(b *testing.B) {
	l := newLoopback(b)
	for _, tc := range []struct {
		name, path string
		status     int
	}{
		{"allowed", pathAllowed, 200},
		{"strip", pathListing, 200},
		{"denied", pathDenied, 403},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				l.get(b, l.proxy, tc.path, tc.status)
			}
		})
	}
}

// TestLoopbackStripRemovesIAM keeps the strip benchmark honest: the
// listing it measures really loses its credential entries.
func TestLoopbackStripRemovesIAM(t *testing.T) {
	pol := benchPolicy(t, "169.254.169.249:80")
	ep := pol.Endpoints()[0]
	out, removed := proxy.StripListing([]byte(metaListing+"\n"), pathListing, func(p string) bool { return pol.CanRead(benchID, ep, p) })
	if removed != 2 || strings.Contains(string(out), "iam/") || !strings.Contains(string(out), "instance-id") {
		t.Errorf("stripped listing (%d removed):\n%s", removed, out)
	}
	if got := fmt.Sprint(pol.Decide(benchID, policy.Request{Endpoint: ep, Method: "GET", Path: pathListing}).Label()); got != "strip" {
		t.Errorf("decision for the listing is %q, want strip", got)
	}
}
