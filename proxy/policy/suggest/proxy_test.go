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
// the workloads were served still works; credentials the policy in force
// did not grant, and paths nobody was served, do not, until the operator
// grants a reviewed group its credential requests.
func TestAuditSuggestEnforceThroughTheProxy(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.Contains(r.URL.Path, "made-up"):
			http.NotFound(w, r)
		case strings.HasSuffix(r.URL.Path, "/"):
			io.WriteString(w, "ami-id\niam/\ninstance-id\nplacement/\n")
		default:
			io.WriteString(w, "value")
		}
	}))
	t.Cleanup(up.Close)
	upAddr := netip.MustParseAddrPort(strings.TrimPrefix(up.URL, "http://"))
	config := fmt.Sprintf(`apiVersion: metaguard.dev/v1alpha1
kind: Policy
mode: audit
endpoints: [{name: aws, address: %q, flavor: aws}]
credentialPaths: [/latest/user-data]
rules:
  - name: web-credentials
    podSelector: {matchLabels: {app: web}}
    allow: [{paths: ["/latest/meta-data/iam/security-credentials/**"]}]
    credentials: allow
`, upAddr)

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

	type request struct {
		src, method, path string
		status            int // in audit mode
	}
	const role = "/latest/meta-data/iam/security-credentials/web-role"
	var traffic []request
	for _, src := range []string{"127.0.0.21", "127.0.0.22"} {
		traffic = append(traffic,
			request{src, "PUT", "/latest/api/token", 200},
			request{src, "GET", "/latest/meta-data/", 200},
			request{src, "GET", role, 200}) // granted by web-credentials
	}
	for _, f := range []string{"availability-zone", "region", "group-name", "partition-number"} {
		traffic = append(traffic, request{"127.0.0.21", "GET", "/latest/meta-data/placement/" + f, 200})
	}
	traffic = append(traffic,
		request{"127.0.0.22", "GET", "/latest/meta-data/placement/region", 200},
		request{"127.0.0.23", "GET", "/latest/meta-data/instance-type", 200},
		request{"127.0.0.23", "HEAD", "/latest/meta-data/instance-id", 200})
	notLearned := []request{
		{"127.0.0.24", "GET", "/latest/user-data", 403},                 // audit mode never forwards a credential read
		{"127.0.0.23", "GET", role, 403},                                // a probe of a pod no credential rule selects
		{"127.0.0.21", "GET", "/latest/meta-data/made-up", 404},         // forwarded, never served
		{"127.0.0.21", "GET", "/latest/meta-data/%2e%2e/iam/info", 400}, // refused before any rule
		{"127.0.0.99", "GET", "/latest/meta-data/hostname", 503},        // unknown pods are never forwarded
	}
	for _, r := range append(append([]request{}, traffic...), notLearned...) {
		if code := do(r.src, r.method, r.path); code != r.status {
			t.Fatalf("audit mode: %s %s from %s got %d, want %d", r.method, r.path, r.src, code, r.status)
		}
	}
	// The audit line is written after the response is sent.
	want := len(traffic) + len(notLearned)
	for deadline := time.Now().Add(5 * time.Second); audit.lines() < want && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if audit.lines() != want {
		t.Fatalf("%d audit lines, want %d", audit.lines(), want)
	}

	log := audit.bytes() // before the enforced replays add to it
	suggestion := func(grant ...string) (Suggestion, Stats) {
		t.Helper()
		s, err := New("policy.yaml", []byte(config), Options{GroupBy: GroupBy{Kind: ByLabel, Label: "app"},
			CollapseThreshold: DefaultCollapseThreshold, Mode: policy.ModeEnforce, GrantCredentials: grant})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.ReadLog(context.Background(), "audit", bytes.NewReader(log)); err != nil {
			t.Fatal(err)
		}
		sug, err := s.Policy()
		if err != nil {
			t.Fatal(err)
		}
		return sug, s.Stats()
	}
	sug, st := suggestion()
	if st.Used != int64(len(traffic)) || st.Review != 2 || st.NotServed != 1 || st.ByProxy != 2 || st.Malformed != 0 {
		t.Errorf("stats %+v of the proxy's own audit log: want %d used, 2 to review, 1 not served, 2 decided by the proxy", st, len(traffic))
	}
	if len(sug.Review) != 2 || sug.Review[0].Group != "ops-monitor" || sug.Review[1].Group != "shop-sa-batch" {
		t.Errorf("review %+v, want the monitor's probe and the batch job's user-data", sug.Review)
	}
	current.Store(mustParse(t, string(sug.YAML)))

	t.Run("the enforced suggestion forwards every request the workloads were served", func(t *testing.T) {
		for _, r := range traffic {
			if code := do(r.src, r.method, r.path); code != http.StatusOK {
				t.Errorf("%s %s from %s got %d\n%s", r.method, r.path, r.src, code, sug.YAML)
			}
		}
	})
	t.Run("the enforced suggestion refuses what nobody was served or granted", func(t *testing.T) {
		for _, r := range append([]request{
			{"127.0.0.21", "GET", "/latest/meta-data/iam/security-credentials/other-role", 403},
			{"127.0.0.21", "GET", "/latest/meta-data/iam/info", 403},
			{"127.0.0.21", "GET", "/latest/user-data", 403},
			{"127.0.0.24", "GET", role, 403},
			{"127.0.0.23", "GET", "/latest/meta-data/hostname", 403},
		}, notLearned[:3]...) {
			if code := do(r.src, r.method, r.path); code != http.StatusForbidden {
				t.Errorf("%s %s from %s got %d, want 403\n%s", r.method, r.path, r.src, code, sug.YAML)
			}
		}
	})
	t.Run("a group the operator grants gets its reviewed credential paths and no more", func(t *testing.T) {
		granted, _ := suggestion("shop-sa-batch")
		current.Store(mustParse(t, string(granted.YAML)))
		if code := do("127.0.0.24", "GET", "/latest/user-data"); code != http.StatusOK {
			t.Errorf("the granted batch job's user-data: %d\n%s", code, granted.YAML)
		}
		for _, r := range [][2]string{{"127.0.0.23", role}, {"127.0.0.24", role}} {
			if code := do(r[0], "GET", r[1]); code != http.StatusForbidden {
				t.Errorf("GET %s from %s: %d, want 403\n%s", r[1], r[0], code, granted.YAML)
			}
		}
	})
}
