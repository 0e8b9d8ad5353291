package suggest

import (
	"bytes"
	"context"
	"fmt"
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

	"metaguard.dev/metaguard/identity"
	"metaguard.dev/metaguard/proxy"
	auditlog "metaguard.dev/metaguard/proxy/audit"
	"metaguard.dev/metaguard/proxy/policy"
)

// lockedBuffer is the proxy's audit destination in this test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) lines() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Count(l.b.Bytes(), []byte("\n"))
}

func (l *lockedBuffer) bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]byte{}, l.b.Bytes()...)
}

// TestAuditSuggestEnforceThroughTheProxy runs the loop an operator runs,
// with the real proxy on loopback: audit mode, suggest from the audit log
// it wrote, enforce the suggestion, replay the same traffic. Everything
// the workloads did still works; credentials they did not read do not.
func TestAuditSuggestEnforceThroughTheProxy(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/") {
			io.WriteString(w, "ami-id\niam/\ninstance-id\nplacement/\n")
			return
		}
		io.WriteString(w, "value")
	}))
	t.Cleanup(up.Close)
	upAddr := netip.MustParseAddrPort(strings.TrimPrefix(up.URL, "http://"))
	config := fmt.Sprintf("apiVersion: metaguard.dev/v1alpha1\nkind: Policy\nmode: audit\nendpoints: [{name: aws, address: %q, flavor: aws}]\ncredentialPaths: [/latest/user-data]\n", upAddr)

	pods := map[netip.Addr]pod{
		netip.MustParseAddr("127.0.0.21"): web1,
		netip.MustParseAddr("127.0.0.22"): web2,
		netip.MustParseAddr("127.0.0.23"): monitor,
		netip.MustParseAddr("127.0.0.24"): batch,
	}
	resolver := identity.ResolverFunc(func(_ context.Context, a netip.Addr) (identity.Identity, error) {
		if p, ok := pods[a]; ok {
			return p.identity(), nil
		}
		return identity.Identity{}, identity.ErrNotFound
	})
	var current atomic.Pointer[policy.Policy]
	current.Store(mustParse(t, config))
	audit := &lockedBuffer{}
	aw, err := auditlog.NewWriter(audit, auditlog.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := proxy.New(proxy.Config{
		Policy:      current.Load,
		Identities:  resolver,
		OriginalDst: func(net.Conn) (netip.AddrPort, error) { return upAddr, nil },
		Audit:       aw,
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	do := func(src, method, path string) int {
		t.Helper()
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: netip.MustParseAddr(src).AsSlice()}}
		c := &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return d.DialContext(ctx, "tcp", ln.Addr().String())
			},
			DisableKeepAlives: true,
		}}
		req, _ := http.NewRequest(method, "http://169.254.169.254"+path, nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s from %s: %v", method, path, src, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}

	type request struct{ src, method, path string }
	var traffic []request
	for _, src := range []string{"127.0.0.21", "127.0.0.22"} {
		traffic = append(traffic,
			request{src, "PUT", "/latest/api/token"},
			request{src, "GET", "/latest/meta-data/"},
			request{src, "GET", "/latest/meta-data/iam/security-credentials/web-role"})
	}
	for _, f := range []string{"availability-zone", "region", "group-name", "partition-number"} {
		traffic = append(traffic, request{"127.0.0.21", "GET", "/latest/meta-data/placement/" + f})
	}
	traffic = append(traffic,
		request{"127.0.0.23", "GET", "/latest/meta-data/instance-type"},
		request{"127.0.0.23", "HEAD", "/latest/meta-data/instance-id"},
		request{"127.0.0.24", "GET", "/latest/user-data"})
	refused := []request{
		{"127.0.0.21", "GET", "/latest/meta-data/%2e%2e/iam/info"}, // 400 before any rule
		{"127.0.0.99", "GET", "/latest/meta-data/hostname"},        // unknown pod, forwarded by audit mode
	}

	for _, r := range traffic {
		if code := do(r.src, r.method, r.path); code != http.StatusOK {
			t.Fatalf("audit mode: %s %s from %s got %d", r.method, r.path, r.src, code)
		}
	}
	for _, r := range refused {
		do(r.src, r.method, r.path)
	}
	// The audit line is written after the response is sent.
	want := len(traffic) + len(refused)
	for deadline := time.Now().Add(5 * time.Second); audit.lines() < want && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if audit.lines() != want {
		t.Fatalf("%d audit lines, want %d", audit.lines(), want)
	}

	s, err := New("policy.yaml", []byte(config), Options{GroupBy: GroupBy{Kind: ByLabel, Label: "app"}, CollapseThreshold: DefaultCollapseThreshold, Mode: policy.ModeEnforce})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ReadLog(context.Background(), "audit", bytes.NewReader(audit.bytes())); err != nil {
		t.Fatal(err)
	}
	sug, err := s.Policy()
	if err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Used != int64(len(traffic)) || st.Malformed != 0 || st.Denied+st.Unidentified != int64(len(refused)) {
		t.Errorf("stats %+v of the proxy's own audit log", st)
	}
	current.Store(mustParse(t, string(sug.YAML)))

	t.Run("the enforced suggestion forwards every request the workloads made", func(t *testing.T) {
		for _, r := range traffic {
			if code := do(r.src, r.method, r.path); code != http.StatusOK {
				t.Errorf("%s %s from %s got %d\n%s", r.method, r.path, r.src, code, sug.YAML)
			}
		}
	})
	t.Run("the enforced suggestion refuses what nobody read", func(t *testing.T) {
		for _, r := range []request{
			{"127.0.0.21", "GET", "/latest/meta-data/iam/security-credentials/other-role"},
			{"127.0.0.21", "GET", "/latest/meta-data/iam/info"},
			{"127.0.0.21", "GET", "/latest/user-data"},
			{"127.0.0.23", "GET", "/latest/meta-data/iam/security-credentials/web-role"},
			{"127.0.0.24", "GET", "/latest/meta-data/iam/security-credentials/web-role"},
			{"127.0.0.99", "GET", "/latest/meta-data/hostname"},
			{"127.0.0.23", "GET", "/latest/meta-data/hostname"},
		} {
			if code := do(r.src, r.method, r.path); code != http.StatusForbidden {
				t.Errorf("%s %s from %s got %d, want 403\n%s", r.method, r.path, r.src, code, sug.YAML)
			}
		}
	})
}
