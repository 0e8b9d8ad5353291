package proxy

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"metaguard.dev/metaguard/identity"
	"metaguard.dev/metaguard/proxy/audit"
	"metaguard.dev/metaguard/proxy/policy"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// upstream is a stand-in metadata service that records what reaches it.
type upstream struct {
	*httptest.Server
	mu       sync.Mutex
	requests []*http.Request
	handler  http.HandlerFunc
}

func newUpstream(t *testing.T, h http.HandlerFunc) *upstream {
	u := &upstream{handler: h}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.requests = append(u.requests, r.Clone(context.Background()))
		u.mu.Unlock()
		u.handler(w, r)
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *upstream) received() []*http.Request {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]*http.Request(nil), u.requests...)
}

func (u *upstream) addr() string { return strings.TrimPrefix(u.URL, "http://") }

// pods is an identity.Resolver over a fixed table.
type pods map[netip.Addr]identity.Identity

func (p pods) Lookup(_ context.Context, a netip.Addr) (identity.Identity, error) {
	if a == netip.MustParseAddr("127.0.0.99") {
		return identity.Identity{}, identity.ErrAmbiguous
	}
	id, ok := p[a]
	if !ok {
		return identity.Identity{}, identity.ErrNotFound
	}
	return id, nil
}

// harness is a proxy in front of one upstream, with a client that can
// speak from any loopback source address (each one a different "pod").
type harness struct {
	t        *testing.T
	up       *upstream
	addr     string // proxy listener
	audit    *syncBuffer
	reg      *prometheus.Registry
	pol      atomic.Pointer[policy.Policy]
	endpoint atomic.Pointer[netip.AddrPort]
	srv      *Server
	stop     func() // stops Serve and waits for it; idempotent
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var (
	plainPod    = netip.MustParseAddr("127.0.0.10")
	accessorPod = netip.MustParseAddr("127.0.0.11")
	unknownPod  = netip.MustParseAddr("127.0.0.12")
	otherPod    = netip.MustParseAddr("127.0.0.13")
	testPods    = pods{
		plainPod:    {Namespace: "web", Name: "frontend", UID: "uid-1", ServiceAccount: "default", Labels: map[string]string{"app": "web"}, NamespaceLabels: map[string]string{}},
		accessorPod: {Namespace: "ops", Name: "agent", UID: "uid-2", ServiceAccount: "agent", Labels: map[string]string{"role": "metadata-accessor"}, NamespaceLabels: map[string]string{}},
		otherPod:    {Namespace: "web", Name: "backend", UID: "uid-3", ServiceAccount: "default", Labels: map[string]string{"app": "web"}, NamespaceLabels: map[string]string{}},
	}
)

const testPolicy = `
apiVersion: metaguard.dev/v1alpha1
kind: Policy
endpoints:
  - {name: ep, address: "UPSTREAM", flavor: FLAVOR}
rules:
  - name: node-facts
    allow:
      - paths: ["/", "/latest/", "/latest/meta-data/", "/latest/meta-data/instance-id", "/computeMetadata/v1/**", "/metadata/instance", "/echo/**"]
      - methods: [PUT]
        paths: ["/latest/api/token", "/echo/**"]
  - name: accessors
    podSelector: {matchLabels: {role: metadata-accessor}}
    allow:
      - paths: ["/**"]
    credentials: allow
EXTRA`

func newHarness(t *testing.T, flavor string, h http.HandlerFunc, mutate ...func(*Config)) *harness {
	return newHarnessPolicy(t, flavor, "", h, mutate...)
}

func newHarnessPolicy(t *testing.T, flavor, extra string, h http.HandlerFunc, mutate ...func(*Config)) *harness {
	t.Helper()
	up := newUpstream(t, h)
	hs := newHarnessAt(t, flavor, extra, up.addr(), mutate...)
	hs.up = up
	return hs
}

// newHarnessAt is a proxy in front of an upstream the test runs itself at
// addr (a raw TCP server, say); h.up is nil.
func newHarnessAt(t *testing.T, flavor, extra, addr string, mutate ...func(*Config)) *harness {
	t.Helper()
	doc := strings.NewReplacer("UPSTREAM", addr, "FLAVOR", flavor, "EXTRA", extra).Replace(testPolicy)
	pol, err := policy.Parse("test", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	hs := &harness{t: t, audit: &syncBuffer{}, reg: prometheus.NewRegistry()}
	aw, err := audit.NewWriter(hs.audit, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	hs.pol.Store(pol)
	hs.endpoint.Store(&pol.Endpoints()[0].Addr)
	budget, err := BudgetFor(32 << 20)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Budget:      budget,
		Policy:      hs.pol.Load,
		Identities:  testPods,
		OriginalDst: func(net.Conn) (netip.AddrPort, error) { return *hs.endpoint.Load(), nil },
		Audit:       aw,
		Registerer:  hs.reg,
	}
	for _, m := range mutate {
		m(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hs.srv = s
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	hs.stop = sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	t.Cleanup(hs.stop)
	return hs
}

// client returns an HTTP client whose connections come from src.
func (h *harness) client(src netip.Addr) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
	tr := &http.Transport{
		DialContext:       func(ctx context.Context, _, _ string) (net.Conn, error) { return d.DialContext(ctx, "tcp", h.addr) },
		DisableKeepAlives: true,
	}
	h.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func (h *harness) do(src netip.Addr, method, target string, header http.Header) (*http.Response, string) {
	h.t.Helper()
	req, err := http.NewRequest(method, "http://169.254.169.254"+target, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := h.client(src).Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

// raw sends bytes as they are and returns the status line's code.
func (h *harness) raw(src netip.Addr, request string) int {
	h.t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src.AsSlice()}, Timeout: time.Second}
	c, err := d.Dial("tcp", h.addr)
	if err != nil {
		h.t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, request); err != nil {
		h.t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// auditLines reads the audit log with the package that owns it.
func (h *harness) auditLines() []audit.Record {
	h.t.Helper()
	recs, err := audit.ReadAll(strings.NewReader(h.audit.String()))
	if err != nil {
		h.t.Fatalf("reading the audit log: %v", err)
	}
	return recs
}

// waitAudit polls until n audit lines are written: the line is written
// after the response, so a client can see the response first.
func (h *harness) waitAudit(n int) []audit.Record {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		lines := h.auditLines()
		if len(lines) >= n || time.Now().After(deadline) {
			return lines
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func ok(body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, body) }
}

// requests is the requests_total counter for a decision and code.
func (h *harness) requests(decision, code string) prometheus.Collector {
	return h.srv.m.requests.WithLabelValues("ep", decision, code)
}

func (h *harness) rejected(limit string) prometheus.Collector {
	return h.srv.m.connsRejected.WithLabelValues(limit)
}
