//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"metaguard.dev/metaguard/e2e/sandbox"
)

const rulesPolicy = `apiVersion: metaguard.dev/v1alpha1
kind: Policy
endpoints:
  - {name: aws, address: "169.254.169.254:80", flavor: aws}
defaultAction: deny
rules: []
`

// probeSample is one probe of a probe loop.
type probeSample struct {
	at time.Duration // since the rules were broken
	o  probeOutcome
}

// repairWindow summarises a probe loop around one break of the rules.
type repairWindow struct {
	probes    int
	direct    int           // probes the IMDS answered itself
	bypass    time.Duration // first to last direct answer, plus one probe interval
	unguarded time.Duration // break until the first metaguard answer after the last non-metaguard one
	outcomes  map[probeOutcome]int
}

func (w repairWindow) String() string {
	return fmt.Sprintf("%d probes, %d answered by the IMDS directly (bypass window %s), metaguard answering again after %s; %v",
		w.probes, w.direct, w.bypass.Round(time.Millisecond), w.unguarded.Round(time.Millisecond), w.outcomes)
}

const probeEvery = 20 * time.Millisecond

func summarise(samples []probeSample) repairWindow {
	w := repairWindow{probes: len(samples), outcomes: map[probeOutcome]int{}}
	var firstDirect, lastDirect, lastBad time.Duration = -1, -1, -1
	for _, s := range samples {
		w.outcomes[s.o]++
		if s.o == probeDirect {
			w.direct++
			if firstDirect < 0 {
				firstDirect = s.at
			}
			lastDirect = s.at
		}
		if s.o != probeProxied {
			lastBad = s.at
		}
	}
	if firstDirect >= 0 {
		w.bypass = lastDirect - firstDirect + probeEvery
	}
	for _, s := range samples {
		if s.at > lastBad && s.o == probeProxied {
			w.unguarded = s.at
			break
		}
	}
	return w
}

// TestRulesRemovedByAnotherProgramAreRepaired breaks metaguard's rules in
// the ways other node agents do, probes the IMDS from a pod every 20 ms
// meanwhile, and measures how long a pod could reach the IMDS directly
// (the bypass window) and how long until metaguard answered again. The
// sync period is 1 s.
func TestRulesRemovedByAnotherProgramAreRepaired(t *testing.T) {
	n := startNode(t, rulesPolicy)
	pod := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "probe"})
	ipt := func(args ...string) {
		t.Helper()
		if out, err := n.s.ExecInNode(n.ctx, args...); err != nil {
			t.Fatalf("%v: %v %s", args, err, out)
		}
	}
	scenarios := []struct {
		name  string
		brk   func()
		after func()
	}{
		{
			name: "another agent's iptables-restore that does not know metaguard's rules",
			brk: func() {
				ipt("sh", "-c", "iptables-save | grep -v METAGUARD | iptables-restore")
			},
		},
		{
			name: "metaguard's own chains flushed",
			brk: func() {
				ipt("iptables", "-w", "-t", "nat", "-F", "METAGUARD-PREROUTING")
				ipt("iptables", "-w", "-t", "filter", "-F", "METAGUARD-FORWARD")
			},
		},
		{
			name: "only the DNAT chain flushed (the drop rules stay)",
			brk:  func() { ipt("iptables", "-w", "-t", "nat", "-F", "METAGUARD-PREROUTING") },
		},
		{
			name: "ACCEPT rules inserted above metaguard's jumps",
			brk: func() {
				ipt("iptables", "-w", "-t", "nat", "-I", "PREROUTING", "1", "-j", "ACCEPT")
				ipt("iptables", "-w", "-t", "filter", "-I", "FORWARD", "1", "-j", "ACCEPT")
			},
			after: func() {
				ipt("iptables", "-w", "-t", "nat", "-D", "PREROUTING", "-j", "ACCEPT")
				ipt("iptables", "-w", "-t", "filter", "-D", "FORWARD", "-j", "ACCEPT")
			},
		},
	}
	const (
		syncPeriod = time.Second
		// One sync period, plus the iptables calls of the check and the
		// repair on a busy two-core machine.
		bound = syncPeriod + time.Second
	)
	for _, sc := range scenarios {
		t.Run("repaired after "+sc.name, func(t *testing.T) {
			if o := probe(pod, "169.254.169.254:80", "/latest/meta-data/iam/security-credentials/", time.Second); o != probeProxied {
				t.Fatalf("before: %s, want proxied", o)
			}
			repairs := n.scalar("metaguard_redirect_repairs_total")
			stop := make(chan struct{})
			done := make(chan []probeSample)
			var start time.Time
			started := make(chan struct{})
			go func() {
				<-started
				var samples []probeSample
				tick := time.NewTicker(probeEvery)
				defer tick.Stop()
				for {
					samples = append(samples, probeSample{time.Since(start), probe(pod, "169.254.169.254:80", "/latest/meta-data/iam/security-credentials/", 150*time.Millisecond)})
					select {
					case <-stop:
						done <- samples
						return
					case <-tick.C:
					}
				}
			}()
			start = time.Now()
			close(started)
			sc.brk()
			eventually(t, 10*time.Second, func() bool { return n.scalar("metaguard_redirect_repairs_total") > repairs })
			time.Sleep(500 * time.Millisecond) // probes of the repaired state
			close(stop)
			w := summarise(<-done)
			if sc.after != nil {
				sc.after()
			}
			reportf(t, "%s", w)
			if w.unguarded > bound {
				t.Errorf("metaguard answered again only %s after the break, want within %s", w.unguarded, bound)
			}
			if w.bypass > bound {
				t.Errorf("pods reached the IMDS directly for %s, want at most %s", w.bypass, bound)
			}
			if w.outcomes[probeProxied] == 0 {
				t.Error("no probe was answered by metaguard after the repair")
			}
			save, err := n.s.ExecInNode(n.ctx, "iptables-save")
			if err != nil {
				t.Fatal(err)
			}
			for _, chain := range []string{"PREROUTING", "FORWARD"} {
				if !firstRuleJumpsToMetaguard(string(save), chain) {
					t.Errorf("after the repair the first rule of %s is not metaguard's jump:\n%s", chain, save)
				}
			}
		})
	}
}

// firstRuleJumpsToMetaguard reports whether the first rule iptables-save
// lists for chain jumps to a METAGUARD chain.
func firstRuleJumpsToMetaguard(save, chain string) bool {
	for _, l := range strings.Split(save, "\n") {
		if strings.HasPrefix(l, "-A "+chain+" ") {
			return strings.Contains(l, "-j METAGUARD-")
		}
	}
	return false
}
