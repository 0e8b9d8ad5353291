package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"metaguard.dev/metaguard/proxy/audit"
	"metaguard.dev/metaguard/proxy/policy"
)

func TestDeniesNameThePodTheReasonAndTheRule(t *testing.T) {
	h := newHarness(t, "aws", ok("x"))
	tests := []struct {
		name   string
		src    netip.Addr
		target string
		header http.Header
		want   int
		body   string
	}{
		{"a path no rule allows", plainPod, "/latest/meta-data/hostname", nil, 403,
			"metaguard: denied GET /latest/meta-data/hostname for pod web/frontend: not-allowed-by-rules (no rule)\n"},
		{"a credential path under a strip rule", plainPod, "/latest/meta-data/iam/info", nil, 403,
			"metaguard: denied GET /latest/meta-data/iam/info for pod web/frontend: not-allowed-by-rules (no rule)\n"},
		{"an unknown pod gets a 503 the SDKs retry", unknownPod, "/latest/meta-data/instance-id", nil, 503,
			"metaguard: denied GET /latest/meta-data/instance-id for unidentified source 127.0.0.12: unknown-pod (no rule)\n"},
		{"an IP claimed by two pods", netip.MustParseAddr("127.0.0.99"), "/latest/meta-data/instance-id", nil, 403,
			"metaguard: denied GET /latest/meta-data/instance-id for unidentified source 127.0.0.99: ambiguous-ip (no rule)\n"},
		{"a request through the workload's own proxy", accessorPod, "/latest/meta-data/instance-id", http.Header{"X-Forwarded-For": {"10.1.1.1"}}, 403,
			"metaguard: requests carrying X-Forwarded-For, Forwarded or X-Forwarded-Host are refused\n"},
		{"a Forwarded header", accessorPod, "/latest/meta-data/instance-id", http.Header{"Forwarded": {"for=10.1.1.1"}}, 403, ""},
		{"an X-Forwarded-Host header", accessorPod, "/latest/meta-data/instance-id", http.Header{"X-Forwarded-Host": {"x"}}, 403, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := h.do(tt.src, "GET", tt.target, tt.header)
			if resp.StatusCode != tt.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.want)
			}
			if tt.want == 503 && resp.Header.Get("Retry-After") == "" {
				t.Error("a 503 without Retry-After")
			}
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
				t.Errorf("Content-Type %q", ct)
			}
			if tt.body != "" && body != tt.body {
				t.Errorf("body %q\nwant %q", body, tt.body)
			}
		})
	}
	if n := len(h.up.received()); n != 0 {
		t.Fatalf("%d denied requests reached the upstream", n)
	}
}

func TestConnectionsNotBoundForAnEndpointAreRefused(t *testing.T) {
	h := newHarness(t, "aws", ok("x"))
	elsewhere := netip.MustParseAddrPort("10.0.0.1:8181")
	h.endpoint.Store(&elsewhere)
	resp, _ := h.do(accessorPod, "GET", "/latest/meta-data/instance-id", nil)
	if resp.StatusCode != http.StatusForbidden || len(h.up.received()) != 0 {
		t.Fatalf("status %d, upstream saw %d", resp.StatusCode, len(h.up.received()))
	}
}

func TestAuditModeForwardsWhatEnforceWouldDenyButNeverCredentials(t *testing.T) {
	listing := "instance-id\niam/\nhostname\n"
	h := newHarnessPolicy(t, "aws", "mode: audit\n", func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/") {
			io.WriteString(w, listing)
			return
		}
		io.WriteString(w, "secret-or-not")
	})
	tests := []struct {
		name     string
		src      netip.Addr
		target   string
		want     int
		decision string
		reason   string
	}{
		{"a path no rule allows is forwarded", plainPod, "/latest/meta-data/hostname", 200, "audit-deny", "not-allowed-by-rules"},
		{"a credential read is denied", plainPod, "/latest/meta-data/iam/info", 403, "deny", "credential-path"},
		{"an old API version of a credential is denied", plainPod, "/2016-09-02/meta-data/iam/security-credentials/role", 403, "deny", "credential-path"},
		{"an unknown pod is never forwarded", unknownPod, "/latest/meta-data/hostname", 503, "deny", "unknown-pod"},
		{"an ambiguous IP is never forwarded", netip.MustParseAddr("127.0.0.99"), "/latest/meta-data/hostname", 403, "deny", "ambiguous-ip"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := h.do(tt.src, "GET", tt.target, nil)
			if resp.StatusCode != tt.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.want)
			}
			if strings.Contains(body, "secret-or-not") && tt.want != 200 {
				t.Errorf("body %q", body)
			}
			l := h.waitAudit(i + 1)[i]
			if l.Decision.String() != tt.decision || l.Reason.String() != tt.reason {
				t.Errorf("audit decision %v reason %v, want %s %s", l.Decision, l.Reason, tt.decision, tt.reason)
			}
		})
	}
	t.Run("a listing forwarded as audit-deny is still stripped", func(t *testing.T) {
		h := newHarnessPolicy(t, "aws", "mode: audit\n", ok(listing))
		resp, body := h.do(plainPod, "GET", "/1.0/meta-data/", nil)
		if resp.StatusCode != 200 || strings.Contains(body, "iam") || !strings.Contains(body, "hostname") {
			t.Fatalf("status %d body %q, want the listing without iam/", resp.StatusCode, body)
		}
		if l := h.waitAudit(1)[0]; l.Decision != audit.DecisionAuditDeny {
			t.Errorf("decision %v, want audit-deny", l.Decision)
		}
	})
	if v := testutil.ToFloat64(h.requests("audit-deny", "200")); v != 1 {
		t.Errorf("requests_total{decision=audit-deny,code=200} = %v, want 1", v)
	}
}

func TestAuditLogHasEveryFieldAndNoSecret(t *testing.T) {
	const secret = "wJalrXUtnFEMI-SECRET-ACCESS-KEY"
	h := newHarness(t, "azure", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"access_token":%q}`, secret)
	})
	_, body := h.do(accessorPod, "GET", "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net&client_id=sekret-client", http.Header{"Metadata": {"true"}, "Authorization": {"Bearer " + secret}})
	if !strings.Contains(body, secret) {
		t.Fatalf("accessor did not get the token: %q", body)
	}
	lines := h.waitAudit(1)
	if len(lines) != 1 {
		t.Fatalf("%d audit lines, want 1", len(lines))
	}
	l := lines[0]
	want := audit.Record{Time: l.Time, SrcIP: netip.MustParseAddr("127.0.0.11"), Pod: "agent", Namespace: "ops", PodUID: "uid-2", ServiceAccount: "agent",
		Labels: l.Labels, Endpoint: "ep", Method: "GET", Path: "/metadata/identity/oauth2/token", QueryKeys: []string{"api-version", "client_id", "resource"},
		Decision: audit.DecisionAllow, Rule: "accessors", Reason: audit.ReasonCredentialsAllowed, Status: 200, Bytes: l.Bytes, Duration: l.Duration}
	if !reflect.DeepEqual(l, want) {
		t.Errorf("audit record %+v\nwant         %+v", l, want)
	}
	if l.Time.IsZero() || l.Bytes == 0 || l.Labels == nil {
		t.Errorf("audit record %+v lacks its time, bytes or labels", l)
	}
	raw := h.audit.String()
	for _, s := range []string{secret, "sekret-client", "vault.azure.net", "2018-02-01"} {
		if strings.Contains(raw, s) {
			t.Errorf("the audit log contains %q: %s", s, raw)
		}
	}
}

func TestMetricsCountEveryRequestByDecisionAndCode(t *testing.T) {
	h := newHarness(t, "aws", ok(awsMetaDataListing))
	h.do(plainPod, "GET", "/latest/meta-data/instance-id", nil)
	h.do(plainPod, "GET", "/latest/meta-data/", nil)
	h.do(plainPod, "GET", "/latest/meta-data/iam/info", nil)
	h.raw(plainPod, "GET /a/../b HTTP/1.1\r\nHost: x\r\n\r\n")
	h.waitAudit(4)
	for _, c := range []struct{ decision, code string }{{"allow", "200"}, {"strip", "200"}, {"deny", "403"}, {"deny", "400"}} {
		if v := testutil.ToFloat64(h.requests(c.decision, c.code)); v != 1 {
			t.Errorf("requests_total{decision=%s,code=%s} = %v, want 1", c.decision, c.code, v)
		}
	}
}

func TestRateLimitIsPerPod(t *testing.T) {
	h := newHarnessPolicy(t, "aws", "rateLimit: {requestsPerSecond: 0.001, burst: 3}\n", ok("x"))
	codes := []int{}
	for i := 0; i < 5; i++ {
		resp, _ := h.do(plainPod, "GET", "/latest/meta-data/instance-id", nil)
		codes = append(codes, resp.StatusCode)
	}
	if fmt.Sprint(codes) != "[200 200 200 429 429]" {
		t.Fatalf("noisy pod got %v, want three 200 then 429", codes)
	}
	if resp, _ := h.do(otherPod, "GET", "/latest/meta-data/instance-id", nil); resp.StatusCode != 200 {
		t.Fatalf("another pod got %d while the first was limited", resp.StatusCode)
	}
}

func TestOneSourceCannotExhaustConnections(t *testing.T) {
	h := newHarness(t, "aws", ok("i-1"), func(c *Config) { c.Budget.ConnsPerSource = 20 })
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: plainPod.AsSlice()}}
	for i := 0; i < 100; i++ {
		c, err := d.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\n") // never finished
		conns = append(conns, c)
	}
	var wg sync.WaitGroup
	errs := make(chan string, 10)
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("GET", "http://169.254.169.254/latest/meta-data/instance-id", nil)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			resp, err := h.client(otherPod).Do(req.WithContext(ctx))
			if err != nil {
				errs <- err.Error()
				return
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				errs <- resp.Status
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Errorf("another pod's request failed while one source held 100 slow connections: %s", e)
	}
	if v := testutil.ToFloat64(h.rejected("per_source")); v < 80 {
		t.Errorf("connections_rejected_total{limit=per_source} = %v, want >= 80", v)
	}
}

func TestPolicyReloadAppliesToTheNextRequest(t *testing.T) {
	h := newHarness(t, "aws", ok("x"))
	if resp, _ := h.do(plainPod, "GET", "/latest/meta-data/hostname", nil); resp.StatusCode != 403 {
		t.Fatalf("before reload: %d", resp.StatusCode)
	}
	doc := strings.NewReplacer("UPSTREAM", h.up.addr(), "FLAVOR", "aws", "EXTRA", "defaultAction: deny\n").Replace(testPolicy)
	doc = strings.Replace(doc, `"/latest/meta-data/instance-id"`, `"/latest/meta-data/instance-id", "/latest/meta-data/hostname"`, 1)
	p, err := policy.Parse("reload", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	h.pol.Store(p)
	if resp, _ := h.do(plainPod, "GET", "/latest/meta-data/hostname", nil); resp.StatusCode != 200 {
		t.Fatalf("after reload: %d", resp.StatusCode)
	}
}

func TestAuditLabelsIsAnObjectEvenWhenEmpty(t *testing.T) {
	h := newHarness(t, "aws", ok("x"))
	h.do(unknownPod, "GET", "/latest/meta-data/instance-id", nil)
	l := h.waitAudit(1)[0]
	if l.Labels == nil || len(l.Labels) != 0 {
		t.Fatalf("labels = %#v, want {}, not null", l.Labels)
	}
}

func TestRefusedProbesAreAttributedToTheirPod(t *testing.T) {
	h := newHarness(t, "aws", ok("x"))
	if got := h.raw(plainPod, "GET /latest/meta-data/%2e%2e/iam HTTP/1.1\r\nHost: x\r\n\r\n"); got != 400 {
		t.Fatalf("status %d", got)
	}
	l := h.waitAudit(1)[0]
	if l.Pod != "frontend" || l.Namespace != "web" || l.Reason != audit.ReasonMalformed || l.Path != "/latest/meta-data/%2e%2e/iam" {
		t.Fatalf("audit line %v: a refused probe must name its pod and raw path", l)
	}
}

// TestAFullProxyMakesRoomForAnotherPod: at the total limit, a newcomer's
// connection is admitted by closing an idle connection of the source that
// holds more than its fair share, never by refusing the newcomer.
func TestAFullProxyMakesRoomForAnotherPod(t *testing.T) {
	h := newHarness(t, "aws", ok("i-1"), func(c *Config) { c.Budget.Conns, c.Budget.ConnsPerSource = 10, 8 })
	// plainPod holds 8 idle keep-alive connections, each after one request.
	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: plainPod.AsSlice()}}
	for range 8 {
		c, err := d.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("filling: %v %v", resp, err)
		}
		resp.Body.Close()
		idle = append(idle, c)
	}
	// Two more from the accessor fill the proxy.
	d2 := net.Dialer{LocalAddr: &net.TCPAddr{IP: accessorPod.AsSlice()}}
	for range 2 {
		c, err := d2.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	waitFor(t, func() bool { return testutil.ToFloat64(h.srv.m.connsOpen) == 10 })
	resp, body := h.do(otherPod, "GET", "/latest/meta-data/instance-id", nil)
	if resp.StatusCode != 200 || body != "i-1" {
		t.Fatalf("a newcomer at the total limit got %d %q", resp.StatusCode, body)
	}
	if v := testutil.ToFloat64(h.srv.m.connsEvicted); v != 1 {
		t.Errorf("connections_evicted_total = %v, want 1 (an idle connection of the heaviest source)", v)
	}
	if v := testutil.ToFloat64(h.rejected("total")); v != 0 {
		t.Errorf("connections_rejected_total{limit=total} = %v: the newcomer was refused", v)
	}
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestNoValidPolicyRefusesEverythingAndSaysWhy: while no valid policy was
// ever loaded, the fail-closed placeholder intercepts and every request
// gets 503 naming the policy's error, reason policy-invalid, never a
// forward.
func TestNoValidPolicyRefusesEverythingAndSaysWhy(t *testing.T) {
	h := newHarness(t, "aws", ok("x"))
	fc := policy.FailClosed(errors.New("policy.yaml:3: defaultAction: must be deny or allow"), []byte("endpoints: [{name: aws, address: \""+h.up.addr()+"\", flavor: aws}]"))
	h.pol.Store(fc)
	resp, body := h.do(accessorPod, "GET", "/latest/meta-data/instance-id", nil)
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" || !strings.Contains(body, "defaultAction") {
		t.Fatalf("status %d body %q, want 503 naming the policy error", resp.StatusCode, body)
	}
	if n := len(h.up.received()); n != 0 {
		t.Fatalf("%d requests reached the upstream", n)
	}
	if l := h.waitAudit(1)[0]; l.Reason != audit.ReasonPolicyInvalid || l.Decision != audit.DecisionDeny {
		t.Errorf("audit %+v, want deny policy-invalid", l)
	}
}

// TestAlertedSeriesExistBeforeTheFirstEvent: rate() cannot see a counter
// born at 1, so the series alerts watch exist at zero from the start, and
// for every endpoint of a policy reloaded later.
func TestAlertedSeriesExistBeforeTheFirstEvent(t *testing.T) {
	h := newHarness(t, "aws", ok("x"))
	check := func(endpoint string) {
		t.Helper()
		for name, labels := range map[string]map[string]string{
			"metaguard_denied_requests_total":      {"endpoint": endpoint, "reason": "unknown-pod"},
			"metaguard_upstream_errors_total":      {"endpoint": endpoint},
			"metaguard_connections_rejected_total": {"limit": "per_source"},
		} {
			if !hasSeries(t, h, name, labels) {
				t.Errorf("no %s%v series before any event", name, labels)
			}
		}
	}
	check("ep")
	doc := strings.Replace(strings.NewReplacer("UPSTREAM", h.up.addr(), "FLAVOR", "aws", "EXTRA", "").Replace(testPolicy), "name: ep,", "name: renamed,", 1)
	pol, err := policy.Parse("test", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	// As the store does: listeners first, then the policy is in force;
	// the series must be there before any request under it.
	if err := h.srv.PolicyChanged(pol); err != nil {
		t.Fatal(err)
	}
	h.pol.Store(pol)
	check("renamed")
}

func hasSeries(t *testing.T, h *harness, name string, labels map[string]string) bool {
	t.Helper()
	fams, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			for k, v := range labels {
				found := false
				for _, l := range m.GetLabel() {
					found = found || (l.GetName() == k && l.GetValue() == v)
				}
				if !found {
					continue next
				}
			}
			return true
		}
	}
	return false
}
