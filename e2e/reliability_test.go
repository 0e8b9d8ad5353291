//go:build e2e

package e2e

import (
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"metaguard.dev/metaguard/e2e/fakecloud"
	"metaguard.dev/metaguard/e2e/sandbox"
)

// relPolicy is the policy of the fault tests: web pods read the instance
// id (AWS) and the GCP tree, accessors read credentials, everybody else
// is denied.
const relPolicy = `apiVersion: metaguard.dev/v1alpha1
kind: Policy
endpoints:
  - {name: aws, address: "169.254.169.254:80", flavor: aws}
  - {name: gcp, address: "169.254.169.252:80", flavor: gcp}
defaultAction: deny
rules:
  - name: web
    podSelector: {matchLabels: {app: web}}
    allow:
      - paths: ["/latest/meta-data/instance-id", "/computeMetadata/v1/**"]
  - name: accessors
    podSelector: {matchLabels: {role: metadata-accessor}}
    allow:
      - paths: ["/**"]
    credentials: allow
`

const (
	instanceID = "http://169.254.169.254/latest/meta-data/instance-id"
	awsCreds   = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
	gcpZone    = "http://169.254.169.252/computeMetadata/v1/instance/zone"
)

// TestAPIServerOutage: with kube-apiserver gone for 30 s (killed, so
// connections are refused, then started again on the same etcd), known
// pods keep their decisions the whole time; a pod whose network came up
// during the outage is denied as unknown until its Pod object can be
// created, then allowed; metaguard is never restarted.
func TestAPIServerOutage(t *testing.T) {
	const outage = 30 * time.Second
	n := startNode(t, relPolicy)
	web := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "web", Labels: map[string]string{"app": "web"}})
	batch := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "batch", Labels: map[string]string{"app": "batch"}})
	// The kubelet started this pod while the API server was unreachable:
	// its network exists, its Pod object cannot be written yet.
	newcomer, err := n.s.AddPodNetwork(n.ctx, sandbox.PodSpec{Namespace: "shop", Name: "newcomer"})
	if err != nil {
		t.Fatal(err)
	}
	pid := n.mg.Pid()

	check := func(phase string) []string {
		var bad []string
		if r := n.get(web, instanceID, nil); r.status != 200 {
			bad = append(bad, phase+": web got "+r.body)
		}
		if r := n.get(batch, instanceID, nil); r.status != 403 || !contains(r.body, "shop/batch") {
			bad = append(bad, phase+": batch got "+r.body)
		}
		if r := n.get(newcomer, instanceID, nil); r.status != 503 || !contains(r.body, "unknown-pod") {
			bad = append(bad, phase+": newcomer got "+r.body)
		}
		return bad
	}
	if bad := check("before"); len(bad) > 0 {
		t.Fatal(bad)
	}

	if err := n.s.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	rounds, failures := 0, 0
	for time.Since(down) < outage {
		bad := check("during the outage")
		for _, b := range bad {
			t.Error(b)
		}
		rounds++
		failures += len(bad)
		time.Sleep(250 * time.Millisecond) // a steady trickle, not a flood
	}
	if err := n.s.StartAPIServer(n.ctx); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	if err := n.s.CreatePodObject(n.ctx, newcomer, sandbox.PodSpec{Labels: map[string]string{"app": "web"}}); err != nil {
		t.Fatal(err)
	}
	created := time.Now()
	// metaguard retries the lost watch itself, at most 12 s apart
	// (client-go's own backoff would wait up to a minute); the rest is
	// margin for a loaded machine.
	eventually(t, 30*time.Second, func() bool { return n.get(newcomer, instanceID, nil).status == 200 })
	allowedAfter := time.Since(created)
	if errs := metric(n.metrics(), "metaguard_identity_watch_errors_total", map[string]string{"resource": "pods"}); errs == 0 {
		t.Error("metaguard_identity_watch_errors_total{resource=\"pods\"} did not count the outage")
	}
	for _, p := range []*sandbox.Pod{web, batch} {
		want := map[*sandbox.Pod]int{web: 200, batch: 403}[p]
		if r := n.get(p, instanceID, nil); r.status != want {
			t.Errorf("after the outage %s got %d, want %d", p, r.status, want)
		}
	}
	if ok, _ := n.mg.Exited(); ok || n.mg.Pid() != pid {
		t.Fatalf("metaguard did not survive the outage: %s", n.mg.Name)
	}
	reportf(t, "API server down %s (restart took %s): %d rounds of 3 requests, %d wrong answers; newcomer allowed %s after its Pod object was created (%s after the API server was back)",
		back.Sub(down).Round(time.Millisecond), back.Sub(down.Add(outage)).Round(time.Millisecond), rounds, failures,
		allowedAfter.Round(time.Millisecond), time.Since(back).Round(time.Millisecond))
}

// TestMetaguardKilledFailsClosed: while metaguard is dead (SIGKILL, so no
// clean-up ran) pods cannot reach any metadata endpoint at all, and
// nothing reaches the upstream; a restart with the same flags resumes
// service.
func TestMetaguardKilledFailsClosed(t *testing.T) {
	n := startNode(t, relPolicy)
	web := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "web", Labels: map[string]string{"app": "web"}})
	accessor := n.addPod(sandbox.PodSpec{Namespace: "ops", Name: "agent", Labels: map[string]string{"role": "metadata-accessor"}})
	if r := n.get(web, gcpZone, google); r.status != 200 {
		t.Fatalf("before: %d %q", r.status, r.body)
	}
	if err := n.mg.Kill(); err != nil {
		t.Fatal(err)
	}
	n.resetCloud(fakecloud.GCP)

	outcomes := map[string]int{}
	for range 5 {
		for _, p := range []*sandbox.Pod{web, accessor} {
			for _, target := range []struct{ addr, path string }{
				{"169.254.169.254:80", "/latest/meta-data/iam/security-credentials/"},
				{"169.254.169.252:80", "/computeMetadata/v1/instance/service-accounts/default/token"},
				{"169.254.169.254:8080", "/"},
			} {
				o := probe(p, target.addr, target.path, 400*time.Millisecond)
				outcomes[target.addr+" "+o.String()]++
				if o != probeRefused && o != probeDropped {
					t.Errorf("with metaguard dead, %s to %s: %s, want refused or dropped", p, target.addr, o)
				}
			}
		}
	}
	if recs := n.cloudRecords(fakecloud.GCP); len(recs) != 0 {
		t.Errorf("the GCP upstream received %d requests while metaguard was dead: %+v", len(recs), recs)
	}
	took := n.restartMetaguard()
	if r := n.get(web, gcpZone, google); r.status != 200 {
		t.Fatalf("after the restart: %d %q", r.status, r.body)
	}
	if r := n.get(accessor, awsCreds, nil); r.status != 200 {
		t.Fatalf("accessor after the restart: %d %q", r.status, r.body)
	}
	if r := n.get(web, awsCreds, nil); r.status != 403 {
		t.Fatalf("web after the restart: %d, want 403", r.status)
	}
	reportf(t, "while dead: %v; restart to ready took %s", outcomes, took.Round(time.Millisecond))
}

// TestBrokenPolicyKeepsTheOldOne: a policy file replaced by a broken one
// leaves the old policy in force, and the error is logged and counted;
// the fixed file then applies.
func TestBrokenPolicyKeepsTheOldOne(t *testing.T) {
	n := startNode(t, relPolicy)
	web := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "web", Labels: map[string]string{"app": "web"}})
	batch := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "batch", Labels: map[string]string{"app": "batch"}})
	errs := func() float64 {
		return metric(n.metrics(), "metaguard_policy_reloads_total", map[string]string{"result": "error"})
	}
	broken := []struct{ name, doc string }{
		{"a YAML syntax error", relPolicy + "  - name: [unclosed\n"},
		{"an unknown field", strings.Replace(relPolicy, "defaultAction: deny", "defaultAction: deny\nrulez: []", 1)},
		{"a wildcard inside a segment", strings.Replace(relPolicy, `"/**"`, `"/lat*"`, 1)},
		{"an empty file, as a half-written ConfigMap", ""},
		{"a default that allows everything but is misspelled", strings.Replace(relPolicy, "defaultAction: deny", "defaultAction: alow", 1)},
	}
	for _, b := range broken {
		t.Run("a policy with "+b.name+" is refused and the old one stays", func(t *testing.T) {
			before := errs()
			n.writePolicy(b.doc)
			eventually(t, 5*time.Second, func() bool { return errs() == before+1 })
			if r := n.get(web, instanceID, nil); r.status != 200 {
				t.Errorf("web: %d, want 200 from the old policy", r.status)
			}
			if r := n.get(batch, instanceID, nil); r.status != 403 {
				t.Errorf("batch: %d, want 403 from the old policy", r.status)
			}
		})
	}
	if !n.stderrHas("policy reload failed") {
		t.Error("no reload error in metaguard's log")
	}
	if got := metric(n.metrics(), "metaguard_policy_info", map[string]string{"generation": "1"}); got != 1 {
		t.Errorf("policy_info{generation=1} = %v: a broken file changed the generation", got)
	}

	t.Run("the fixed file then applies", func(t *testing.T) {
		n.writePolicy(strings.Replace(relPolicy, "matchLabels: {app: web}", "matchExpressions: [{key: app, operator: In, values: [web, batch]}]", 1))
		eventually(t, 5*time.Second, func() bool { return n.get(batch, instanceID, nil).status == 200 })
		if got := metric(n.metrics(), "metaguard_policy_info", map[string]string{"generation": "2"}); got != 1 {
			t.Errorf("policy_info{generation=2} = %v", got)
		}
		if r := n.get(batch, awsCreds, nil); r.status != 403 {
			t.Errorf("batch credentials under the fixed policy: %d, want 403", r.status)
		}
	})
}

// TestIPReuseWithEventsOutOfOrder: pod B is given pod A's address before
// A's deletion is seen. From the moment metaguard knows B, the address
// never again gets A's access: first it is ambiguous (denied), then B's.
func TestIPReuseWithEventsOutOfOrder(t *testing.T) {
	n := startNode(t, relPolicy)
	// One network namespace holds the address; the Pod objects claiming it
	// come and go, as a CNI reassigning it would leave them.
	wire, err := n.s.AddPodNetwork(n.ctx, sandbox.PodSpec{Namespace: "ops", Name: "wire"})
	if err != nil {
		t.Fatal(err)
	}
	ip := wire.IP
	a := n.addPod(sandbox.PodSpec{Namespace: "ops", Name: "pod-a", Labels: map[string]string{"role": "metadata-accessor"}, IP: ip, APIOnly: true})
	eventually(t, 5*time.Second, func() bool { return n.get(wire, awsCreds, nil).status == 200 })

	// B appears with A's address while A is still Running: the informer
	// sees B's add before A's delete.
	n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "pod-b", Labels: map[string]string{"app": "batch"}, IP: ip, APIOnly: true})
	eventually(t, 5*time.Second, func() bool {
		r := n.get(wire, awsCreds, nil)
		return r.status == 403 && contains(r.body, "ambiguous-ip")
	})
	// From here on, the address must never read credentials again.
	stop := make(chan struct{})
	type tally struct{ probes, leaks int }
	result := make(chan tally, 1)
	go func() {
		var c tally
		for {
			select {
			case <-stop:
				result <- c
				return
			default:
			}
			r, _, err := podGet(n.ctx, n.s, wire, awsCreds, nil)
			c.probes++
			if err == nil && r.status == 200 {
				c.leaks++
			}
		}
	}()
	if err := n.s.DeletePod(n.ctx, a); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() bool {
		r := n.get(wire, awsCreds, nil)
		return r.status == 403 && contains(r.body, "shop/pod-b")
	})
	time.Sleep(500 * time.Millisecond) // a few more probes with B settled
	close(stop)
	c := <-result
	if c.leaks > 0 {
		t.Fatalf("the reused address read A's credentials %d times in %d requests after B was known", c.leaks, c.probes)
	}
	reportf(t, "%d credential requests from the reused address between B's arrival and A's deletion being seen: %d got A's access", c.probes, c.leaks)
	if r := n.get(wire, instanceID, nil); r.status != 403 || !contains(r.body, "shop/pod-b") {
		t.Fatalf("B's own decision: %d %q, want 403 naming shop/pod-b", r.status, r.body)
	}
}

// TestAFreshNodeWithABrokenPolicyFailsClosed: on a node with no rules at
// all (after metaguard cleanup), metaguard started with a broken policy
// does not exit: it installs the rules for the well-known metadata
// endpoints and those the broken file still names, refuses every request
// with the policy's error, stays not ready, and takes up the first valid
// policy that is mounted.
func TestAFreshNodeWithABrokenPolicyFailsClosed(t *testing.T) {
	n := startNode(t, relPolicy)
	web := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "web", Labels: map[string]string{"app": "web"}})
	if err := n.mg.Stop(); err != nil {
		t.Fatal(err)
	}
	if out, err := n.s.ExecInNode(n.ctx, filepath.Join(n.s.BinDir(), "metaguard"), "cleanup"); err != nil {
		t.Fatalf("metaguard cleanup: %v: %s", err, out)
	}
	// Without rules, the pod reaches the mock directly: the window a
	// crash-looping metaguard would leave open.
	if r := n.get(web, instanceID, nil); r.status != 200 || contains(r.body, "metaguard") {
		t.Fatalf("after cleanup: %d %q, want the IMDS's own answer", r.status, r.body)
	}
	n.writePolicy(strings.Replace(relPolicy, "defaultAction: deny", "defaultAction: alow", 1))
	mg, err := n.s.StartMetaguardUnready(n.ctx, "--config="+n.policy, "--reload-interval=200ms", "--sync-period=1s",
		"--host-ip="+sandbox.HostIP.String()+","+sandbox.HostIPv6.String())
	if err != nil {
		t.Fatal(err)
	}
	n.mg = mg
	eventually(t, 15*time.Second, func() bool {
		r, _, err := podGet(n.ctx, n.s, web, instanceID, nil)
		return err == nil && r.status == 503 && contains(r.body, "no valid policy")
	})
	r := n.get(web, instanceID, nil)
	if r.status != 503 || !contains(r.body, "defaultAction") {
		t.Errorf("a pod under the broken policy: %d %q, want 503 naming the policy error", r.status, r.body)
	}
	resp, err := n.s.NodeHTTPClient().Get("http://127.0.0.1:9181/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || !contains(string(body), "no valid policy") {
		t.Errorf("/readyz: %d %q, want 503 naming the policy", resp.StatusCode, body)
	}
	m := n.metrics()
	if metric(m, "metaguard_policy_last_reload_successful", nil) != 0 || metric(m, "metaguard_ready", nil) != 0 {
		t.Error("metrics do not say the policy is refused and metaguard is not ready")
	}
	if ok, _ := mg.Exited(); ok {
		t.Fatal("metaguard exited on a broken policy")
	}

	n.writePolicy(relPolicy)
	eventually(t, 10*time.Second, func() bool { return n.get(web, instanceID, nil).status == 200 })
	if err := n.s.WaitReady(n.ctx, mg, "127.0.0.1:9181"); err != nil {
		t.Fatal(err)
	}
	if got := metric(n.metrics(), "metaguard_policy_info", map[string]string{"generation": "1"}); got != 1 {
		t.Errorf("policy_info{generation=1} = %v after the first valid policy", got)
	}
}
