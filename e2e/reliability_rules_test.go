//go:build e2e

package e2e

import (
	"fmt"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"metaguard.dev/metaguard/e2e/fakecloud"
	"metaguard.dev/metaguard/e2e/sandbox"
)

const rulesPolicy = `apiVersion: metaguard.dev/v1alpha1
kind: Policy
endpoints:
  - {name: aws, address: "169.254.169.254:80", flavor: aws}
  - {name: gcp, address: "169.254.169.252:80", flavor: gcp}
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

// ruleBreak is one way other node agents break metaguard's rules.
type ruleBreak struct {
	name    string
	nftOnly bool
	brk     func(t *testing.T, ipt iptablesTools)
	after   func(t *testing.T, ipt iptablesTools)
}

// iptablesTools names one back end's binaries, as another agent on the
// node would run them.
type iptablesTools struct {
	run                 func(t *testing.T, args ...string)
	v4, v6, save, save6 string
	restore, restore6   string
}

var ruleBreaks = []ruleBreak{
	{
		name: "another agent's iptables-restore of both families that does not know metaguard's rules",
		brk: func(t *testing.T, ipt iptablesTools) {
			ipt.run(t, "sh", "-c", ipt.save+" | grep -v METAGUARD | "+ipt.restore+"; "+ipt.save6+" | grep -v METAGUARD | "+ipt.restore6)
		},
	},
	{
		name: "iptables -F and iptables -t nat -F, in both families (every chain of both tables)",
		brk: func(t *testing.T, ipt iptablesTools) {
			for _, bin := range []string{ipt.v4, ipt.v6} {
				ipt.run(t, bin, "-w", "-F")
				ipt.run(t, bin, "-w", "-t", "nat", "-F")
			}
		},
	},
	{
		name:    "nft flush ruleset (a firewall reload that drops every table)",
		nftOnly: true,
		brk:     func(t *testing.T, ipt iptablesTools) { ipt.run(t, "nft", "flush", "ruleset") },
	},
	{
		name: "metaguard's own chains flushed",
		brk: func(t *testing.T, ipt iptablesTools) {
			ipt.run(t, ipt.v4, "-w", "-t", "nat", "-F", "METAGUARD-PREROUTING")
			ipt.run(t, ipt.v4, "-w", "-t", "filter", "-F", "METAGUARD-FORWARD")
		},
	},
	{
		name: "ACCEPT rules inserted above metaguard's jumps",
		brk: func(t *testing.T, ipt iptablesTools) {
			ipt.run(t, ipt.v4, "-w", "-t", "nat", "-I", "PREROUTING", "1", "-j", "ACCEPT")
			ipt.run(t, ipt.v4, "-w", "-t", "filter", "-I", "FORWARD", "1", "-j", "ACCEPT")
		},
		after: func(t *testing.T, ipt iptablesTools) {
			ipt.run(t, ipt.v4, "-w", "-t", "nat", "-D", "PREROUTING", "-j", "ACCEPT")
			ipt.run(t, ipt.v4, "-w", "-t", "filter", "-D", "FORWARD", "-j", "ACCEPT")
		},
	},
	{
		name: "metaguard's routing rules deleted (the chains stay)",
		brk: func(t *testing.T, ipt iptablesTools) {
			for range 2 {
				ipt.run(t, "ip", "-4", "rule", "del", "pref", "6")
			}
			ipt.run(t, "ip", "-4", "rule", "del", "pref", "7")
		},
	},
}

// TestRulesRemovedByAnotherProgramAreRepaired breaks metaguard's rules in
// the ways other node agents do while a denied pod probes the AWS and the
// GCP metadata addresses every 20 ms each. No probe may be answered by a
// metadata server itself: the routing rules refuse what escapes the
// flushed chains (the GCP fake records every request it gets, so a direct
// answer cannot go unnoticed). With the nft back end the sync period is
// 30 s, so only a change notification can explain a repair within the
// bound; the legacy back end has no notifications and repairs on its 1 s
// timer, the routing rules holding meanwhile.
func TestRulesRemovedByAnotherProgramAreRepaired(t *testing.T) {
	for _, tt := range []struct {
		mode   string
		period time.Duration
		bound  time.Duration
	}{
		// The bound is far below the period: a repair on the timer would
		// fail it.
		{"nft", 30 * time.Second, 2 * time.Second},
		// One period, plus the iptables calls on a busy two-core machine.
		{"legacy", time.Second, 2 * time.Second},
	} {
		t.Run(tt.mode, func(t *testing.T) {
			testRulesRepaired(t, tt.mode, tt.period, tt.bound)
		})
	}
}

func testRulesRepaired(t *testing.T, mode string, period, bound time.Duration) {
	requireNFT(t)
	n := startNode(t, rulesPolicy, "--iptables-mode="+mode, "--sync-period="+period.String())
	pod := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "probe"})
	ipt := iptablesTools{
		run: func(t *testing.T, args ...string) {
			t.Helper()
			if out, err := n.s.ExecInNode(n.ctx, args...); err != nil {
				t.Fatalf("%v: %v %s", args, err, out)
			}
		},
		v4: "iptables-" + mode, v6: "ip6tables-" + mode,
		save: "iptables-" + mode + "-save", save6: "ip6tables-" + mode + "-save",
		restore: "iptables-" + mode + "-restore", restore6: "ip6tables-" + mode + "-restore",
	}
	targets := []struct {
		addr, path string
	}{
		{sandbox.AWSIMDS.String(), "/latest/meta-data/iam/security-credentials/"},
		{sandbox.GCPMetadata.String(), "/computeMetadata/v1/instance/service-accounts/default/token"},
	}
	for _, rb := range ruleBreaks {
		if rb.nftOnly && mode != "nft" {
			continue
		}
		t.Run("no probe reaches a metadata server and the rules are back after "+rb.name, func(t *testing.T) {
			for _, tg := range targets {
				if o := probe(pod, tg.addr, tg.path, time.Second); o != probeProxied {
					t.Fatalf("before: %s %s, want proxied", tg.addr, o)
				}
			}
			n.resetCloud(fakecloud.GCP)
			repairs := n.scalar("metaguard_redirect_repairs_total")

			var start time.Time
			var proxiedAfter atomic.Int32 // probes answered by metaguard once the rules are back
			var repairedAt atomic.Int64
			stop := make(chan struct{})
			done := make(chan []probeSample, len(targets))
			started := make(chan struct{})
			for _, tg := range targets {
				go func() {
					<-started
					var samples []probeSample
					tick := time.NewTicker(probeEvery)
					defer tick.Stop()
					for {
						s := probeSample{time.Since(start), probe(pod, tg.addr, tg.path, 150*time.Millisecond)}
						samples = append(samples, s)
						if r := repairedAt.Load(); r > 0 && s.o == probeProxied && int64(s.at) > r {
							proxiedAfter.Add(1)
						}
						select {
						case <-stop:
							done <- samples
							return
						case <-tick.C:
						}
					}
				}()
			}
			start = time.Now()
			close(started)
			rb.brk(t, ipt)
			back := within(10*time.Second, func() bool {
				save, err := n.s.ExecInNode(n.ctx, ipt.save)
				if err != nil {
					return false
				}
				rules, err := n.s.ExecInNode(n.ctx, "ip", "-4", "rule", "show")
				if err != nil {
					return false
				}
				// Per endpoint address: a DNAT, an OUTPUT exemption, and
				// ICMP, DNS, DNS over TCP, NTP and the drop in FORWARD.
				return firstRuleJumpsToMetaguard(string(save), "PREROUTING") && firstRuleJumpsToMetaguard(string(save), "FORWARD") &&
					firstRuleJumpsToMetaguard(string(save), "OUTPUT") &&
					strings.Count(string(save), "-A METAGUARD-PREROUTING ") == len(targets) &&
					strings.Count(string(save), "-A METAGUARD-OUTPUT ") == len(targets) &&
					strings.Count(string(save), "-A METAGUARD-FORWARD ") == 5*len(targets) &&
					strings.Count(string(rules), "prohibit") == len(targets) && strings.Contains(string(rules), "nop")
			})
			rulesBack := time.Since(start)
			repairedAt.Store(int64(rulesBack))
			// Probes of the repaired state, from both loops.
			within(5*time.Second, func() bool { return proxiedAfter.Load() >= 10 })
			close(stop)
			var all []probeSample
			for range targets {
				all = append(all, <-done...)
			}
			if rb.after != nil {
				rb.after(t, ipt)
			}
			w := summarise(all)
			reportf(t, "%s back end: rules back after %s; %s", mode, rulesBack.Round(time.Millisecond), w)
			if w.direct != 0 {
				t.Errorf("%d probes were answered by a metadata server directly", w.direct)
			}
			if recs := n.cloudRecords(fakecloud.GCP); len(recs) != 0 {
				t.Errorf("the GCP metadata server received %d requests, the first from %s: %s %s", len(recs), recs[0].RemoteAddr, recs[0].Method, recs[0].Path)
			}
			if !back {
				t.Fatalf("the chains and the routing rules were not back within 10s")
			}
			if rulesBack > bound {
				t.Errorf("the rules were back only %s after the break, want within %s (sync period %s)", rulesBack, bound, period)
			}
			if w.unguarded > bound+time.Second {
				t.Errorf("metaguard answered again only %s after the break", w.unguarded)
			}
			// The counter grows when the repairing sync ends, which can be
			// after the rules it put back are listed.
			if !within(5*time.Second, func() bool { return n.scalar("metaguard_redirect_repairs_total") > repairs }) {
				t.Errorf("metaguard_redirect_repairs_total = %v, want more than %v", n.scalar("metaguard_redirect_repairs_total"), repairs)
			}
		})
	}
}

// requireNFT fails a test that needs the nft binary, with the fix.
func requireNFT(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		t.Fatal("nft not found: apt-get install nftables (.ci/run does)")
	}
}

// within polls cond every 20 ms until it holds (true) or d passes (false).
func within(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
	return true
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
