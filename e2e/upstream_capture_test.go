//go:build e2e

package e2e

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"metaguard.dev/metaguard/e2e/fakecloud"
	"metaguard.dev/metaguard/e2e/sandbox"
)

// capturePolicy lets accessor pods read GCP tokens: what an impostor
// upstream would forge.
const capturePolicy = `apiVersion: metaguard.dev/v1alpha1
kind: Policy
endpoints:
  - {name: gcp, address: "169.254.169.252:80", flavor: gcp}
defaultAction: deny
rules:
  - name: accessors
    podSelector: {matchLabels: {role: metadata-accessor}}
    allow:
      - paths: ["/computeMetadata/v1/**"]
    credentials: allow
`

const (
	captureToken = "http://169.254.169.252" + token
	forgedToken  = "ya29.forged-by-the-tenant"
)

var gcpHeader = map[string]string{"Metadata-Flavor": "Google"}

// impostor is a tenant's pod that answers like the GCP metadata server,
// with a forged token, and counts the requests it gets.
type impostor struct {
	pod      *sandbox.Pod
	requests atomic.Int32
}

func startImpostor(t *testing.T, n *node) *impostor {
	t.Helper()
	imp := &impostor{pod: n.addPod(sandbox.PodSpec{Namespace: "tenant", Name: "impostor"})}
	ln, err := sandbox.NetnsListen(imp.pod.Netns, "tcp", ":80")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			imp.requests.Add(1)
			w.Header().Set("Metadata-Flavor", "Google")
			io.WriteString(w, `{"access_token":"`+forgedToken+`","expires_in":3599,"token_type":"Bearer"}`)
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return imp
}

// kubeProxyExternalIP writes what kube-proxy (iptables mode) writes for a
// Service with externalIPs: [169.254.169.252] whose endpoint is the
// impostor: a KUBE-SERVICES chain jumped to from nat OUTPUT, inserted at
// position 1, that DNATs the node's own connections to the address.
func kubeProxyExternalIP(t *testing.T, n *node, iptables string, imp *impostor) {
	t.Helper()
	for _, args := range [][]string{
		{"-t", "nat", "-N", "KUBE-SERVICES"},
		{"-t", "nat", "-A", "KUBE-SERVICES", "-d", "169.254.169.252/32", "-p", "tcp", "-m", "tcp", "--dport", "80",
			"-m", "comment", "--comment", "tenant/metadata external IP", "-j", "DNAT", "--to-destination", imp.pod.IP.String() + ":80"},
		{"-t", "nat", "-I", "OUTPUT", "1", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"},
	} {
		n.execNode(t, append([]string{iptables, "-w"}, args...)...)
	}
}

func (n *node) execNode(t *testing.T, args ...string) string {
	t.Helper()
	out, err := n.s.ExecInNode(n.ctx, args...)
	if err != nil {
		t.Fatalf("%v: %v %s", args, err, out)
	}
	return string(out)
}

// tokenFromPod asks for the token as an accessor pod would.
func tokenFromPod(n *node, pod *sandbox.Pod) (response, error) {
	r, _, err := podGet(n.ctx, n.s, pod, captureToken, gcpHeader)
	return r, err
}

// expectRefusedNotForged checks that every one of a few token requests is
// refused (502) instead of being answered by the impostor, that the
// impostor never saw a request, that the refusals are counted and that no
// audit line says allow with a 200.
func expectRefusedNotForged(t *testing.T, n *node, pod *sandbox.Pod, imp *impostor) {
	t.Helper()
	refused := n.scalar("metaguard_upstream_nat_refused_total")
	auditBefore := len(n.audit())
	const tries = 5
	for i := range tries {
		r, err := tokenFromPod(n, pod)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if strings.Contains(r.body, forgedToken) {
			t.Fatalf("request %d was answered by the impostor: %d %q", i, r.status, r.body)
		}
		if r.status != http.StatusBadGateway {
			t.Errorf("request %d: %d %q, want 502", i, r.status, r.body)
		}
	}
	if got := imp.requests.Load(); got != 0 {
		t.Errorf("the impostor received %d requests", got)
	}
	if got := n.scalar("metaguard_upstream_nat_refused_total"); got < refused+tries {
		t.Errorf("metaguard_upstream_nat_refused_total = %v, want at least %v", got, refused+tries)
	}
	lines := n.waitAudit(auditBefore + tries)
	for _, l := range lines[auditBefore:] {
		if l.Status == http.StatusOK {
			t.Errorf("audit line says %s with 200 for %s: %+v", l.Decision, l.Path, l)
		}
	}
}

// TestUpstreamCannotBeCaptured emulates CVE-2020-8554 on the sandbox: a
// tenant's Service with externalIPs: [169.254.169.252] makes kube-proxy
// DNAT the node's connections to the GCP metadata address to the tenant's
// pod, which forges tokens. metaguard's own connections must reach the
// real metadata server, or fail (502); never the impostor.
func TestUpstreamCannotBeCaptured(t *testing.T) {
	t.Run("nft back end", func(t *testing.T) {
		requireNFT(t)
		n := startNode(t, capturePolicy)
		accessor := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "accessor", Labels: map[string]string{"role": "metadata-accessor"}})
		imp := startImpostor(t, n)

		t.Run("the node's own unmarked traffic is unaffected: the routing rules let it reach the metadata server", func(t *testing.T) {
			r := nodeGet(t, n, captureToken)
			if r.status != http.StatusOK || !strings.Contains(r.body, "ya29.e2e-fake-token") {
				t.Fatalf("node's request: %d %q, want the real token", r.status, r.body)
			}
		})
		t.Run("NAT in another nftables table (kube-proxy's nftables mode), which metaguard's iptables rule cannot stop, is refused by the peer check", func(t *testing.T) {
			// No pooled upstream connection exists yet: each request dials.
			ruleset := "table ip kube-proxy-e2e {\n chain out {\n  type nat hook output priority -101; policy accept;\n  ip daddr 169.254.169.252 tcp dport 80 dnat to " + imp.pod.IP.String() + ":80\n }\n}\n"
			if out, err := execNodeInput(n, ruleset, "nft", "-f", "-"); err != nil {
				t.Fatalf("nft: %v: %s", err, out)
			}
			expectRefusedNotForged(t, n, accessor, imp)
			n.execNode(t, "nft", "delete", "table", "ip", "kube-proxy-e2e")
		})
		kubeProxyExternalIP(t, n, "iptables-nft", imp)
		t.Run("the node's own unmarked traffic is DNATed by kube-proxy's rule as before: only metaguard's marked connections are exempt", func(t *testing.T) {
			r := nodeGet(t, n, captureToken)
			if !strings.Contains(r.body, forgedToken) {
				t.Fatalf("node's request: %d %q, want the impostor's answer (the emulation must work)", r.status, r.body)
			}
			imp.requests.Store(0)
		})
		t.Run("metaguard's OUTPUT jump is put back above kube-proxy's at once, and the accessor's token comes from the real metadata server", func(t *testing.T) {
			begin := time.Now()
			eventually(t, 5*time.Second, func() bool {
				return firstRuleJumpsToMetaguard(n.execNode(t, "iptables-nft-save", "-t", "nat"), "OUTPUT")
			})
			reportf(t, "metaguard's nat OUTPUT jump back at position 1 within %s of kube-proxy's insertion", time.Since(begin).Round(time.Millisecond))
			n.resetCloud(fakecloud.GCP)
			r, err := tokenFromPod(n, accessor)
			if err != nil {
				t.Fatal(err)
			}
			if r.status != http.StatusOK || !strings.Contains(r.body, "ya29.e2e-fake-token") {
				t.Fatalf("accessor got %d %q, want the real token", r.status, r.body)
			}
			if got := imp.requests.Load(); got != 0 {
				t.Errorf("the impostor received %d requests", got)
			}
			recs := n.cloudRecords(fakecloud.GCP)
			if len(recs) != 1 || !strings.HasPrefix(recs[0].RemoteAddr, sandbox.HostIP.String()+":") {
				t.Errorf("the real metadata server saw %+v, want one request from the node", recs)
			}
		})
	})

	t.Run("legacy back end, metaguard's jump deleted and not yet repaired", func(t *testing.T) {
		// A long sync period and no nftables notifications with legacy:
		// nothing puts the jump back during the test.
		n := startNode(t, capturePolicy, "--iptables-mode=legacy", "--sync-period=1h")
		accessor := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "accessor", Labels: map[string]string{"role": "metadata-accessor"}})
		imp := startImpostor(t, n)
		kubeProxyExternalIP(t, n, "iptables-legacy", imp)
		n.execNode(t, "iptables-legacy", "-w", "-t", "nat", "-D", "OUTPUT", "-m", "comment", "--comment",
			"metaguard: keep NAT off metaguard connections to metadata endpoints", "-j", "METAGUARD-OUTPUT")
		if save := n.execNode(t, "iptables-legacy-save", "-t", "nat"); strings.Contains(save, "-A OUTPUT -m comment --comment \"metaguard") {
			t.Fatalf("the jump is still there:\n%s", save)
		}
		expectRefusedNotForged(t, n, accessor, imp)
	})
}

// execNodeInput runs a command in the node's network namespace with input
// on its stdin.
func execNodeInput(n *node, input string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(n.ctx, "ip", append([]string{"netns", "exec", n.s.NodeNetns()}, args...)...)
	cmd.Stdin = strings.NewReader(input)
	return cmd.CombinedOutput()
}

// nodeGet is a GET from the node's own network namespace, unmarked, as
// any node process would send it.
func nodeGet(t *testing.T, n *node, url string) response {
	t.Helper()
	ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Metadata-Flavor", "Google")
	resp, err := n.s.NodeHTTPClient().Do(req)
	if err != nil {
		t.Fatalf("node's GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: string(b)}
}
