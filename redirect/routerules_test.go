package redirect

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestDesiredRouteRules(t *testing.T) {
	tests := []struct {
		name      string
		endpoints []Endpoint
		want      map[family][]string
	}{
		{
			name:      "one endpoint gets the nop target, a skip for local traffic and a refusal, in the order they are added",
			endpoints: []Endpoint{awsV4},
			want: map[family][]string{ipv4: {
				"7: nop",
				"5: to 169.254.169.254/32 iif lo ipproto tcp dport 80 goto 7",
				"6: to 169.254.169.254/32 ipproto tcp dport 80 prohibit",
			}},
		},
		{
			name:      "each family gets its own rules, sorted by address, and an endpoint repeated is one rule",
			endpoints: []Endpoint{private, awsV6, awsV4, {Name: "again", Addr: awsV4.Addr}},
			want: map[family][]string{
				ipv4: {
					"7: nop",
					"5: to 169.254.169.254/32 iif lo ipproto tcp dport 80 goto 7",
					"5: to 192.168.100.21/32 iif lo ipproto tcp dport 32000 goto 7",
					"6: to 169.254.169.254/32 ipproto tcp dport 80 prohibit",
					"6: to 192.168.100.21/32 ipproto tcp dport 32000 prohibit",
				},
				ipv6: {
					"7: nop",
					"5: to fd00:ec2::254/128 iif lo ipproto tcp dport 80 goto 7",
					"6: to fd00:ec2::254/128 ipproto tcp dport 80 prohibit",
				},
			},
		},
		{
			name: "two ports of one address get a rule each, and no other port (DNS, NTP) is refused",
			endpoints: []Endpoint{
				{Name: "wire", Addr: netip.MustParseAddrPort("168.63.129.16:80")},
				{Name: "wire-agent", Addr: netip.MustParseAddrPort("168.63.129.16:32526")},
			},
			want: map[family][]string{ipv4: {
				"7: nop",
				"5: to 168.63.129.16/32 iif lo ipproto tcp dport 80 goto 7",
				"5: to 168.63.129.16/32 iif lo ipproto tcp dport 32526 goto 7",
				"6: to 168.63.129.16/32 ipproto tcp dport 80 prohibit",
				"6: to 168.63.129.16/32 ipproto tcp dport 32526 prohibit",
			}},
		},
		{
			name: "no endpoints want no rules in either family",
			want: map[family][]string{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := desiredRouteRules(tt.endpoints)
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range families {
				if _, ok := got[f]; !ok {
					t.Errorf("no entry for %s: a family without endpoints must still be emptied", f)
				}
				var lines []string
				for _, r := range got[f] {
					lines = append(lines, r.String())
				}
				if !slices.Equal(lines, tt.want[f]) {
					t.Errorf("%s:\n%s\nwant:\n%s", f, strings.Join(lines, "\n"), strings.Join(tt.want[f], "\n"))
				}
			}
		})
	}
	t.Run("an invalid endpoint is refused as the chains refuse it", func(t *testing.T) {
		if _, err := desiredRouteRules([]Endpoint{{Name: "lo", Addr: netip.MustParseAddrPort("127.0.0.1:80")}}); err == nil {
			t.Fatal("no error")
		}
	})
}

func TestPlanRouteRules(t *testing.T) {
	want, err := desiredRouteRules([]Endpoint{awsV4, private})
	if err != nil {
		t.Fatal(err)
	}
	w := want[ipv4]
	nop, skipAWS, skipPrivate, refuseAWS, refusePrivate := w[0], w[1], w[2], w[3], w[4]
	stale := routeRule{family: ipv4, action: ruleRefuse, dst: netip.MustParsePrefix("10.9.9.9/32"), port: 80}
	staleSkip := routeRule{family: ipv4, action: ruleSkipLocal, dst: stale.dst, port: 80}
	tests := []struct {
		name          string
		have, want    []routeRule
		wantAdd, wDel []routeRule
	}{
		{"nothing installed: everything is added, target first, refusals last", nil, w, w, nil},
		{"everything installed: nothing to do", w, w, nil, nil},
		{"the target deleted by another agent is added back alone", w[1:], w, []routeRule{nop}, nil},
		{"one refusal deleted is added back alone", []routeRule{nop, skipAWS, skipPrivate, refuseAWS}, w, []routeRule{refusePrivate}, nil},
		{"a duplicate is deleted, the first copy kept", append(slices.Clone(w), refuseAWS), w, nil, []routeRule{refuseAWS}},
		{"an endpoint no longer wanted loses its refusal before its skip", append(slices.Clone(w), staleSkip, stale), w, nil, []routeRule{stale, staleSkip}},
		{"removing everything deletes refusals, then skips, then the target", w, nil, nil, []routeRule{refuseAWS, refusePrivate, skipAWS, skipPrivate, nop}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			add, del := planRouteRules(tt.have, tt.want)
			if !slices.Equal(add, tt.wantAdd) || !slices.Equal(del, tt.wDel) {
				t.Errorf("add %v del %v, want add %v del %v", add, del, tt.wantAdd, tt.wDel)
			}
		})
	}
}

func TestSyncInstallsTheRoutingBackstop(t *testing.T) {
	fx := newFixture(t)
	fx.setAndSync(t, awsV4, awsV6, private)
	rules := fx.sys.rules
	want, _ := desiredRouteRules([]Endpoint{awsV4, awsV6, private})
	for _, f := range families {
		var lines []string
		for _, r := range want[f] {
			lines = append(lines, r.String())
		}
		slices.SortStableFunc(lines, func(a, b string) int { return int(a[0]) - int(b[0]) })
		if got := rules.dump(f); !slices.Equal(got, lines) {
			t.Errorf("%s rules:\n%s\nwant:\n%s", f, strings.Join(got, "\n"), strings.Join(lines, "\n"))
		}
	}
	for _, ep := range []Endpoint{awsV4, awsV6, private} {
		if !rules.refuses(ep.Addr, false) {
			t.Errorf("a forwarded connection to %s is not refused", ep.Addr)
		}
		if rules.refuses(ep.Addr, true) {
			t.Errorf("a local connection to %s is refused", ep.Addr)
		}
	}
	for _, other := range []string{"169.254.169.254:53", "169.254.169.254:81", "169.254.169.253:80"} {
		if rules.refuses(netip.MustParseAddrPort(other), false) {
			t.Errorf("a forwarded connection to %s is refused: only the endpoints' ports are", other)
		}
	}
	t.Run("a second sync writes no rule", func(t *testing.T) {
		rules.resetOps()
		if err := fx.rec.Sync(context.Background()); err != nil {
			t.Fatal(err)
		}
		if w := rules.writes(); len(w) != 0 {
			t.Errorf("wrote %q", w)
		}
	})
}

func TestSyncRepairsTheRoutingBackstop(t *testing.T) {
	tests := []struct {
		name    string
		disrupt func(fr *fakeRules)
	}{
		{"a refusal deleted", func(fr *fakeRules) {
			fr.remove(ipv4, func(r routeRule) bool { return r.action == ruleRefuse && r.port == 80 })
		}},
		{"the nop target deleted, which makes the skip fall through", func(fr *fakeRules) {
			fr.remove(ipv6, func(r routeRule) bool { return r.action == ruleNop })
		}},
		{"every rule flushed, as `ip rule flush` does", func(fr *fakeRules) {
			for _, f := range families {
				fr.remove(f, func(routeRule) bool { return true })
			}
		}},
		{"a duplicate of a rule added", func(fr *fakeRules) {
			fr.put(fakeRule{r: routeRule{family: ipv4, action: ruleSkipLocal, dst: netip.MustParsePrefix("169.254.169.254/32"), port: 80}})
		}},
		{"a stale rule of an endpoint metaguard no longer has", func(fr *fakeRules) {
			fr.put(fakeRule{r: routeRule{family: ipv4, action: ruleRefuse, dst: netip.MustParsePrefix("10.1.2.3/32"), port: 8080}})
		}},
	}
	for _, tt := range tests {
		t.Run("a sync repairs "+tt.name+" and counts one repair", func(t *testing.T) {
			fx := newFixture(t)
			fx.setAndSync(t, awsV4, awsV6, private)
			// Rules of one priority are equivalent in any order.
			want := map[family][]string{ipv4: slices.Sorted(slices.Values(fx.sys.rules.dump(ipv4))), ipv6: slices.Sorted(slices.Values(fx.sys.rules.dump(ipv6)))}
			tt.disrupt(fx.sys.rules)
			if err := fx.rec.Sync(context.Background()); err != nil {
				t.Fatal(err)
			}
			for _, f := range families {
				if got := slices.Sorted(slices.Values(fx.sys.rules.dump(f))); !slices.Equal(got, want[f]) {
					t.Errorf("%s after repair:\n%s\nwant:\n%s", f, strings.Join(got, "\n"), strings.Join(want[f], "\n"))
				}
			}
			if fx.repairs() != 1 {
				t.Errorf("repairs = %v, want 1", fx.repairs())
			}
		})
	}
}

// TestNoSyncStepRefusesLocalTrafficOrReopensAnEndpoint checks the order of
// every write: after each one, locally generated traffic to every endpoint
// old or new is routed, and forwarded traffic to an endpoint that stays is
// still refused.
func TestNoSyncStepRefusesLocalTrafficOrReopensAnEndpoint(t *testing.T) {
	fx := newFixture(t)
	steps := []struct {
		name string
		eps  []Endpoint
		brk  func()
	}{
		{"the first install", []Endpoint{awsV4, awsV6}, nil},
		{"an endpoint added", []Endpoint{awsV4, awsV6, private}, nil},
		{"an endpoint removed", []Endpoint{awsV4, private}, nil},
		{"a repair of a deleted target", []Endpoint{awsV4, private}, func() {
			fx.sys.rules.remove(ipv4, func(r routeRule) bool { return r.action == ruleNop })
		}},
		{"every endpoint removed", nil, nil},
	}
	var prev []Endpoint
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			if st.brk != nil {
				st.brk()
			}
			all := append(slices.Clone(prev), st.eps...)
			var kept []Endpoint
			for _, ep := range st.eps {
				if slices.Contains(prev, ep) {
					kept = append(kept, ep)
				}
			}
			writes := 0
			fx.sys.rules.afterOp = func(fr *fakeRules) {
				writes++
				for _, ep := range all {
					if fr.refuses(ep.Addr, true) {
						t.Errorf("after write %d, local traffic to %s is refused", writes, ep.Addr)
					}
				}
				for _, ep := range kept {
					if st.brk == nil && !fr.refuses(ep.Addr, false) {
						t.Errorf("after write %d, forwarded traffic to %s, which stays an endpoint, is no longer refused", writes, ep.Addr)
					}
				}
			}
			defer func() { fx.sys.rules.afterOp = nil }()
			fx.setAndSync(t, st.eps...)
			if writes == 0 {
				t.Error("the step wrote no rule")
			}
			prev = st.eps
		})
	}
}

func TestRoutingRulesOfAnUnsupportedFamilyAreSkippedWithAWarning(t *testing.T) {
	sys := newFakeSystem(backendNFT)
	sys.rules.unsupported[ipv6] = true
	logs := &logBuffer{}
	rec := newV4OnlyReconciler(t, sys, logs)
	syncOK(t, rec, awsV4, awsV6)
	syncOK(t, rec, awsV4, awsV6)
	if !sys.rules.refuses(awsV4.Addr, false) {
		t.Error("IPv4 has no backstop")
	}
	if n := logs.count("no routing rules in this address family"); n != 1 {
		t.Errorf("warned %d times, want once", n)
	}
}

func TestForeignRulesAtOurPrioritiesAreLeftAloneWithAWarning(t *testing.T) {
	sys := newFakeSystem(backendNFT)
	sys.rules.put(fakeRule{r: routeRule{family: ipv4}, priority: rulePriorityRefuse, foreign: true})
	logs := &logBuffer{}
	rec := newV4OnlyReconciler(t, sys, logs)
	syncOK(t, rec, awsV4)
	syncOK(t, rec, awsV4)
	if got := sys.rules.dump(ipv4); !slices.Contains(got, "6: foreign") {
		t.Errorf("the foreign rule is gone: %q", got)
	}
	if n := logs.count("share metaguard's priorities"); n != 1 {
		t.Errorf("warned %d times, want once", n)
	}
	if err := rec.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := sys.rules.dump(ipv4); !slices.Equal(got, []string{"6: foreign"}) {
		t.Errorf("after cleanup: %q, want only the foreign rule", got)
	}
}

func TestAFailedRuleWriteFailsTheSync(t *testing.T) {
	fx := newFixture(t)
	fx.sys.rules.failOn = func(op string) error {
		if strings.HasPrefix(op, "add") {
			return errors.New("netlink: operation not permitted")
		}
		return nil
	}
	if err := fx.rec.SetEndpoints([]Endpoint{awsV4}); err != nil {
		t.Fatal(err)
	}
	if err := fx.rec.Sync(context.Background()); err == nil || !strings.Contains(err.Error(), "not permitted") {
		t.Fatalf("got %v, want the netlink error", err)
	}
	if fx.rec.Ready() {
		t.Error("ready without the backstop")
	}
	if n := len(chainRules(t, fx.v4, "nat", NATChain)); n == 0 {
		t.Error("the failed routing rules also kept the redirect chains out")
	}
}

func TestCleanupRemovesTheRoutingRules(t *testing.T) {
	fx := newFixture(t)
	fx.setAndSync(t, awsV4, awsV6)
	if err := fx.rec.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if got := fx.sys.rules.dump(f); len(got) != 0 {
			t.Errorf("%s rules left: %q", f, got)
		}
	}
	fx.setAndSync(t, awsV4, awsV6)
	if err := cleanupAll(context.Background(), discard(), *fx.sys.system()); err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if got := fx.sys.rules.dump(f); len(got) != 0 {
			t.Errorf("%s rules left after cleanupAll: %q", f, got)
		}
	}
}
