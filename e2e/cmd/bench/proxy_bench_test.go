package main

import (
	"context"
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

// These benchmarks drive a proxy.Server through its exported API on a
// loopback listener, to a real upstream, the kernel's TCP included, with
// the client and the upstream in the same process; BenchmarkLoopbackDirect
// is their work alone, so the proxy's own cost is the difference.

// loopback is an upstream, a proxy.Server in front of it, and a keep-alive
// client.
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
	doc := strings.NewReplacer("169.254.169.249:80", upAddr.String(), "  - {name: mock, address: \"169.254.169.254:80\", flavor: aws}\n", "").Replace(loadPolicy)
	pol, err := policy.Parse("bench", []byte(doc))
	if err != nil {
		b.Fatal(err)
	}
	id := identity.Identity{Namespace: "bench", Name: "load-0", UID: "0f6d5a0e", ServiceAccount: "default",
		Labels: map[string]string{"app": "load"}, NamespaceLabels: map[string]string{"kubernetes.io/metadata.name": "bench"}}
	srv, err := proxy.New(proxy.Config{
		Policy:     func() *policy.Policy { return pol },
		Identities: identity.ResolverFunc(func(context.Context, netip.Addr) (identity.Identity, error) { return id, nil }),
		// Every connection is bound for the endpoint, as SO_ORIGINAL_DST
		// says after the DNAT.
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
	return &loopback{up.Listener.Addr().String(), ln.Addr().String(), &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8, DisableCompression: true}}}
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

func BenchmarkLoopbackDirect(b *testing.B) {
	l := newLoopback(b)
	b.ReportAllocs()
	for b.Loop() {
		l.get(b, l.upstream, pathAllowed, 200)
	}
}

func BenchmarkLoopbackProxy(b *testing.B) {
	l := newLoopback(b)
	for _, r := range []row{rowAllow, rowStrip, rowDeny} {
		b.Run(r.key, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				l.get(b, l.proxy, r.path, r.status)
			}
		})
	}
}
