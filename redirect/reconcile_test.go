package redirect

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// foreignRules stand for kube-proxy, the CNI and Docker: metaguard must put
// its jumps above them and never touch them.
var foreignRules = []string{
	"-t nat -N KUBE-SERVICES",
	"-t nat -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
	"-t nat -A POSTROUTING -j MASQUERADE",
	"-t filter -N CNI-FORWARD",
	"-t filter -A FORWARD -m comment --comment \"CNI firewall plugin rules\" -j CNI-FORWARD",
	"-t filter -A FORWARD -d 169.254.169.254/32 -j ACCEPT",
}

type fixture struct {
	sys  *fakeSystem
	v4   *fakeTables
	v6   *fakeTables
	reg  *prometheus.Registry
	rec  *Reconciler
	base string // v4 state before metaguard
}

func newFixture(t *testing.T, hosts ...netip.Addr) *fixture {
	t.Helper()
	sys := newFakeSystem(backendNFT, backendLegacy)
	fx := &fixture{sys: sys, v4: sys.tables[backendNFT][ipv4], v6: sys.tables[backendNFT][ipv6], reg: prometheus.NewRegistry()}
	for _, cmd := range foreignRules {
		fx.v4.run(cmd)
		fx.v6.run(strings.ReplaceAll(cmd, "169.254.169.254/32", "fd00:ec2::254/128"))
	}
	fx.base = fx.v4.save()
	if len(hosts) == 0 {
		hosts = []netip.Addr{host4, host6}
	}
	rec, err := New(Config{HostIPs: hosts, ListenPort: 8181, UpstreamMark: testMark, Mode: ModeNFT, Registerer: fx.reg, sys: sys.system()})
	if err != nil {
		t.Fatal(err)
	}
	fx.rec = rec
	return fx
}

func (fx *fixture) setAndSync(t *testing.T, eps ...Endpoint) {
	t.Helper()
	if err := fx.rec.SetEndpoints(eps); err != nil {
		t.Fatal(err)
	}
	if err := fx.rec.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func (fx *fixture) repairs() float64 { return testutil.ToFloat64(fx.rec.metrics.repairs) }
func (fx *fixture) syncs(result string) float64 {
	return testutil.ToFloat64(fx.rec.metrics.syncs.WithLabelValues(result))
}

// chainRules lists a chain's rules as "-A" lines.
func chainRules(t *testing.T, ft *fakeTables, table, chain string) []string {
	t.Helper()
	lines, err := ft.List(table, chain)
	if err != nil {
		t.Fatalf("listing %s %s: %v", table, chain, err)
	}
	return slices.DeleteFunc(lines, func(l string) bool { return !strings.HasPrefix(l, "-A") })
}

// withoutMetaguard removes metaguard's chains, jumps and rules from a dump,
// leaving what belongs to others.
func withoutMetaguard(dump string) string {
	var out []string
	for _, l := range strings.Split(dump, "\n") {
		if !strings.Contains(l, "METAGUARD-") && !strings.Contains(l, "metaguard:") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestFirstSyncInstallsAboveExistingRules(t *testing.T) {
	fx := newFixture(t)
	if fx.rec.Ready() {
		t.Fatal("ready before any sync")
	}
	fx.setAndSync(t, awsV4, awsV6, private)

	for _, ft := range []*fakeTables{fx.v4, fx.v6} {
		for _, h := range hooks {
			got := chainRules(t, ft, h.table, h.builtin)
			if want := "-A " + h.builtin + " " + quote(jumpRule(h)); got[0] != want {
				t.Errorf("%s %s starts with %q, want %q", h.table, h.builtin, got[0], want)
			}
		}
	}
	if n := len(chainRules(t, fx.v4, "nat", NATChain)); n != 2 {
		t.Errorf("v4 nat chain has %d rules, want 2", n)
	}
	if n := len(chainRules(t, fx.v6, "nat", NATChain)); n != 1 {
		t.Errorf("v6 nat chain has %d rules, want 1", n)
	}
	if got := withoutMetaguard(fx.v4.save()); got != withoutMetaguard(fx.base) {
		t.Errorf("others' rules changed:\n%s\nwant:\n%s", got, fx.base)
	}
	if !fx.rec.Ready() {
		t.Error("not ready after a successful sync")
	}
	if fx.repairs() != 0 {
		t.Errorf("install counted as %v repairs", fx.repairs())
	}
	if fx.syncs("ok") != 1 {
		t.Errorf("syncs{ok} = %v, want 1", fx.syncs("ok"))
	}
}

func TestSecondSyncWritesNothing(t *testing.T) {
	fx := newFixture(t)
	fx.setAndSync(t, awsV4, awsV6, private)
	before := fx.v4.save()
	fx.v4.resetOps()
	fx.v6.resetOps()
	fx.sys.flushes.take()

	if err := fx.rec.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if w := append(fx.v4.writes(), fx.v6.writes()...); len(w) != 0 {
		t.Errorf("an unchanged kernel got writes: %q", w)
	}
	if got := fx.v4.save(); got != before {
		t.Errorf("state changed:\n%s\nwant:\n%s", got, before)
	}
	if f := fx.sys.flushes.take(); len(f) != 0 {
		t.Errorf("an unchanged sync flushed conntrack for %v", f)
	}
	if fx.repairs() != 0 {
		t.Errorf("repairs = %v, want 0", fx.repairs())
	}
}

func TestSyncRepairsWhatOthersChanged(t *testing.T) {
	tests := []struct {
		name    string
		disrupt func(fx *fixture)
	}{
		{"our nat chain flushed", func(fx *fixture) { fx.v4.run("-t nat -F " + NATChain) }},
		{"our filter chain flushed", func(fx *fixture) { fx.v4.run("-t filter -F " + FilterChain) }},
		{"the jump deleted", func(fx *fixture) {
			h := hookOf(NATChain)
			if err := fx.v4.Delete(h.table, h.builtin, jumpRule(h)...); err != nil {
				panic(err)
			}
		}},
		{"another agent inserting a rule above the jump", func(fx *fixture) {
			fx.v4.run("-t nat -I PREROUTING 1 -d 169.254.169.254/32 -j ACCEPT")
		}},
		{"the jump duplicated further down", func(fx *fixture) {
			fx.v4.run("-t filter -A FORWARD " + quote(jumpRule(hookOf(FilterChain))))
		}},
		{"a jump with a stale comment beside ours", func(fx *fixture) {
			fx.v4.run("-t nat -A PREROUTING -m comment --comment \"metaguard: old\" -j " + NATChain)
		}},
		{"a transient jump left by an interrupted repair", func(fx *fixture) {
			fx.v4.run("-t nat -A PREROUTING " + quote(transientJumpRule(hookOf(NATChain))))
		}},
		{"a foreign rule added to our chain", func(fx *fixture) {
			fx.v4.run("-t filter -I " + FilterChain + " 1 -j ACCEPT")
		}},
		{"our rules reordered", func(fx *fixture) {
			fx.v4.run("-t filter -F " + FilterChain)
			for _, r := range slices.Backward(mustDesired(fx)[ipv4][FilterChain]) {
				fx.v4.run("-t filter -A " + FilterChain + " " + quote(r))
			}
		}},
		{"another agent's iptables-restore of the state before metaguard", func(fx *fixture) { fx.v4.restore(fx.base) }},
	}
	for _, tt := range tests {
		t.Run("a sync repairs "+tt.name+" and counts one repair", func(t *testing.T) {
			fx := newFixture(t)
			fx.setAndSync(t, awsV4, awsV6, private)
			want := fx.v4.save()
			tt.disrupt(fx)
			others := withoutMetaguard(fx.v4.save())

			if err := fx.rec.Sync(context.Background()); err != nil {
				t.Fatal(err)
			}
			got := fx.v4.save()
			if withoutMetaguard(got) != others {
				t.Errorf("others' rules changed:\n%s\nwant:\n%s", withoutMetaguard(got), others)
			}
			for _, h := range hooks {
				rules := chainRules(t, fx.v4, h.table, h.builtin)
				if rules[0] != "-A "+h.builtin+" "+quote(jumpRule(h)) {
					t.Errorf("%s %s does not start with our jump: %q", h.table, h.builtin, rules)
				}
				if n := len(slices.DeleteFunc(rules, func(l string) bool { return !strings.HasSuffix(l, "-j "+h.chain) })); n != 1 {
					t.Errorf("%s %s has %d jumps to %s, want 1", h.table, h.builtin, n, h.chain)
				}
				gotChain, wantChain := chainRules(t, fx.v4, h.table, h.chain), mustDesired(fx)[ipv4][h.chain]
				if len(gotChain) != len(wantChain) {
					t.Errorf("%s %s: %q, want %d rules", h.table, h.chain, gotChain, len(wantChain))
				}
			}
			if fx.repairs() != 1 {
				t.Errorf("repairs = %v, want 1", fx.repairs())
			}
			if withoutMetaguard(want) == others && got != want {
				t.Errorf("state after repair:\n%s\nwant:\n%s", got, want)
			}

			fx.v4.resetOps()
			if err := fx.rec.Sync(context.Background()); err != nil {
				t.Fatal(err)
			}
			if w := fx.v4.writes(); len(w) != 0 {
				t.Errorf("the sync after the repair still wrote %q", w)
			}
		})
	}
}

func mustDesired(fx *fixture) map[family]ruleSet {
	fx.rec.mu.Lock()
	eps := fx.rec.endpoints
	fx.rec.mu.Unlock()
	want, err := desiredRules(eps, fx.rec.hostIPs, fx.rec.port, fx.rec.mark)
	if err != nil {
		panic(err)
	}
	return want
}

func TestRepairNeverDeletesAForeignRuleInsertedMidway(t *testing.T) {
	fx := newFixture(t)
	fx.setAndSync(t, awsV4)
	fx.v4.run("-t nat -I PREROUTING 1 -j KUBE-SERVICES")
	// Another agent inserts at the top between our listing and our writes;
	// deleting by position would now hit its rule.
	fx.v4.beforeOp = func(f *fakeTables, op string) bool {
		if !strings.HasPrefix(op, "insert nat PREROUTING") {
			return false
		}
		if err := f.insertLocked("nat", "PREROUTING", 1, []string{"-m", "comment", "--comment", "late", "-j", "KUBE-SERVICES"}); err != nil {
			panic(err)
		}
		return true
	}
	fx.v4.resetOps()
	if err := fx.rec.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if fx.v4.beforeOp != nil {
		t.Fatal("the other agent never got to insert its rule")
	}
	list := chainRules(t, fx.v4, "nat", "PREROUTING")
	if list[0] != "-A PREROUTING "+quote(jumpRule(hookOf(NATChain))) {
		t.Errorf("PREROUTING does not start with our jump: %q", list)
	}
	rules := strings.Join(list, "\n")
	for _, want := range []string{`--comment late -j KUBE-SERVICES`, "-A PREROUTING -j KUBE-SERVICES", "kubernetes service portals"} {
		if !strings.Contains(rules, want) {
			t.Errorf("foreign rule %q lost:\n%s", want, rules)
		}
	}
}

func TestEndpointChangesAreUpdatesNotRepairs(t *testing.T) {
	fx := newFixture(t)
	fx.setAndSync(t, awsV4, awsV6, private)
	fx.sys.flushes.take()

	t.Run("removing an endpoint removes its rules", func(t *testing.T) {
		fx.setAndSync(t, awsV4, awsV6)
		for _, r := range append(chainRules(t, fx.v4, "nat", NATChain), chainRules(t, fx.v4, "filter", FilterChain)...) {
			if strings.Contains(r, "192.168.100.21") {
				t.Errorf("rule for a removed endpoint remains: %s", r)
			}
		}
		if n := len(chainRules(t, fx.v4, "filter", FilterChain)); n != 5 {
			t.Errorf("filter chain has %d rules, want the 5 of one address", n)
		}
	})
	t.Run("adding an endpoint adds its rules and flushes conntrack for its family", func(t *testing.T) {
		fx.sys.flushes.take()
		fx.setAndSync(t, awsV4, awsV6, private)
		if n := len(chainRules(t, fx.v4, "nat", NATChain)); n != 2 {
			t.Errorf("nat chain has %d rules, want 2", n)
		}
		if got, want := fx.sys.flushes.take(), []netip.AddrPort{awsV4.Addr, private.Addr}; !slices.Equal(got, want) {
			t.Errorf("flushed %v, want %v", got, want)
		}
	})
	t.Run("removing every IPv6 endpoint removes the ip6tables chains and jumps", func(t *testing.T) {
		fx.setAndSync(t, awsV4)
		if got := fx.v6.save(); strings.Contains(got, "METAGUARD") || strings.Contains(got, "metaguard") {
			t.Errorf("ip6tables still holds metaguard state:\n%s", got)
		}
	})
	if fx.repairs() != 0 {
		t.Errorf("endpoint changes counted as %v repairs", fx.repairs())
	}
}

func TestFailedSyncIsCountedAndNotReady(t *testing.T) {
	fx := newFixture(t)
	fx.setAndSync(t, awsV4)
	fx.v4.run("-t nat -F " + NATChain)
	fx.v4.failOn = func(op string) error {
		if strings.HasPrefix(op, "insert") {
			return &fakeErr{4, "Another app is currently holding the xtables lock"}
		}
		return nil
	}
	if err := fx.rec.Sync(context.Background()); err == nil || !strings.Contains(err.Error(), "xtables lock") {
		t.Fatalf("got %v, want the lock error", err)
	}
	if fx.rec.Ready() {
		t.Error("ready after a failed sync")
	}
	if fx.syncs("error") != 1 {
		t.Errorf("syncs{error} = %v, want 1", fx.syncs("error"))
	}
	fx.v4.failOn = nil
	if err := fx.rec.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !fx.rec.Ready() {
		t.Error("not ready after recovering")
	}
	// The flush was repaired, if by the second try: another agent
	// rewriting the tables while a sync runs makes that common.
	if fx.repairs() != 1 {
		t.Errorf("repairs = %v, want 1 for the repair the failed sync left half done", fx.repairs())
	}
}

func TestSyncBeforeSetEndpointsKeepsThePredecessorsRules(t *testing.T) {
	fx := newFixture(t)
	fx.setAndSync(t, awsV4, awsV6)
	installed := fx.v4.save()

	// A restarted metaguard syncs (say, Run started early) before it has
	// read its policy.
	restarted, err := New(Config{HostIPs: []netip.Addr{host4, host6}, ListenPort: 8181, Mode: ModeNFT, sys: fx.sys.system()})
	if err != nil {
		t.Fatal(err)
	}
	fx.v4.resetOps()
	if err := restarted.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if w := fx.v4.writes(); len(w) != 0 {
		t.Errorf("sync without endpoints wrote %q", w)
	}
	if got := fx.v4.save(); got != installed {
		t.Errorf("rules changed:\n%s\nwant:\n%s", got, installed)
	}
	if restarted.Ready() {
		t.Error("ready without endpoints")
	}
}
