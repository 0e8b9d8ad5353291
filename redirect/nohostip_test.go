package redirect

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
)

// logBuffer collects log lines for assertions.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) count(substr string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Count(b.buf.String(), substr)
}

func (b *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newV4OnlyReconciler is a reconciler for an IPv4-only node: one IPv4 host
// IP, whatever sys offers for IPv6.
func newV4OnlyReconciler(t *testing.T, sys *fakeSystem, logs *logBuffer) *Reconciler {
	t.Helper()
	rec, err := New(Config{HostIPs: []netip.Addr{host4}, ListenPort: 8181, Mode: ModeNFT, Logger: logs.logger(), sys: sys.system()})
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

func syncOK(t *testing.T, rec *Reconciler, eps ...Endpoint) {
	t.Helper()
	if err := rec.SetEndpoints(eps); err != nil {
		t.Fatalf("SetEndpoints: %v", err)
	}
	if err := rec.Sync(context.Background()); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if !rec.Ready() {
		t.Fatal("not ready after a successful sync")
	}
}

func TestEndpointOfAFamilyWithoutHostIPIsDroppedNotRedirected(t *testing.T) {
	sys := newFakeSystem(backendNFT)
	v4, v6 := sys.tables[backendNFT][ipv4], sys.tables[backendNFT][ipv6]
	logs := &logBuffer{}
	rec := newV4OnlyReconciler(t, sys, logs)
	syncOK(t, rec, awsV4, awsV6)

	t.Run("ip6tables gets the filter rules for the IPv6 endpoint and its jump", func(t *testing.T) {
		want, err := desiredRules([]Endpoint{awsV6}, []netip.Addr{host4}, 8181, 0)
		if err != nil {
			t.Fatal(err)
		}
		got := chainRules(t, v6, tableFilter, FilterChain)
		if len(got) != len(want[ipv6][FilterChain]) || !strings.Contains(got[len(got)-1], "-d fd00:ec2::254/128 -m comment") || !strings.HasSuffix(got[len(got)-1], "-j DROP") {
			t.Errorf("ip6tables %s = %q, want the endpoint's rules ending in its DROP", FilterChain, got)
		}
		if fwd := chainRules(t, v6, tableFilter, "FORWARD"); len(fwd) == 0 || fwd[0] != "-A FORWARD "+quote(jumpRule(hookOf(FilterChain))) {
			t.Errorf("ip6tables FORWARD = %q, want our jump first", fwd)
		}
	})
	t.Run("ip6tables gets no nat chain and no nat jump", func(t *testing.T) {
		if got := v6.save(); strings.Contains(got, NATChain) {
			t.Errorf("ip6tables holds %s:\n%s", NATChain, got)
		}
	})
	t.Run("the IPv4 endpoint is still redirected", func(t *testing.T) {
		if n := len(chainRules(t, v4, tableNAT, NATChain)); n != 1 {
			t.Errorf("iptables %s has %d rules, want 1", NATChain, n)
		}
	})
	t.Run("the warning is logged once per endpoint, however often the policy is reloaded", func(t *testing.T) {
		syncOK(t, rec, awsV4, awsV6)
		syncOK(t, rec, awsV6, awsV4)
		if n := logs.count("reason=no-host-ip"); n != 1 {
			t.Errorf("warned %d times, want once:\n%s", n, logs.buf.String())
		}
		if n := logs.count("endpoint=aws-v6"); n != 1 {
			t.Errorf("warning does not name the endpoint once:\n%s", logs.buf.String())
		}
	})
	t.Run("removing the IPv6 endpoint removes every ip6tables chain and jump", func(t *testing.T) {
		syncOK(t, rec, awsV4)
		if got := v6.save(); strings.Contains(got, "METAGUARD") || strings.Contains(got, "metaguard") {
			t.Errorf("ip6tables still holds metaguard state:\n%s", got)
		}
	})
	t.Run("cleanup removes the ip6tables filter rules too", func(t *testing.T) {
		syncOK(t, rec, awsV4, awsV6)
		if err := rec.Cleanup(context.Background()); err != nil {
			t.Fatal(err)
		}
		for f, ft := range map[family]*fakeTables{ipv4: v4, ipv6: v6} {
			if got := ft.save(); strings.Contains(got, "METAGUARD") {
				t.Errorf("%s still holds metaguard state:\n%s", f, got)
			}
		}
	})
}

func TestLosingTheIPv6HostIPRemovesThePredecessorsIPv6DNAT(t *testing.T) {
	sys := newFakeSystem(backendNFT)
	v6 := sys.tables[backendNFT][ipv6]
	dual, err := New(Config{HostIPs: []netip.Addr{host4, host6}, ListenPort: 8181, Mode: ModeNFT, sys: sys.system()})
	if err != nil {
		t.Fatal(err)
	}
	syncOK(t, dual, awsV4, awsV6)
	if n := len(chainRules(t, v6, tableNAT, NATChain)); n != 1 {
		t.Fatalf("dual-stack install: ip6tables %s has %d rules, want 1", NATChain, n)
	}

	// The restarted metaguard runs with only the IPv4 host IP.
	rec := newV4OnlyReconciler(t, sys, &logBuffer{})
	syncOK(t, rec, awsV4, awsV6)
	if got := v6.save(); strings.Contains(got, NATChain) {
		t.Errorf("the IPv6 DNAT to a host IP metaguard no longer has remains:\n%s", got)
	}
	if n := len(chainRules(t, v6, tableFilter, FilterChain)); n == 0 {
		t.Error("the IPv6 endpoint lost its filter rules")
	}
	v6.resetOps()
	if err := rec.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if w := v6.writes(); len(w) != 0 {
		t.Errorf("a second sync wrote %q", w)
	}
}

func TestAnUnusableFamilyWithoutHostIPIsSkipped(t *testing.T) {
	tests := []struct {
		name   string
		break6 func(s *fakeSystem)
		// filterOnly: ip6tables works but without nat, so only filter
		// rules are managed there.
		filterOnly bool
	}{
		{"ip6tables is not installed", func(s *fakeSystem) { delete(s.tables[backendNFT], ipv6) }, false},
		{"the kernel has no IPv6 netfilter (IPv6 disabled)", func(s *fakeSystem) {
			s.tables[backendNFT][ipv6].failOn = func(op string) error {
				return &fakeErr{3, "can't initialize ip6tables table: Address family not supported by protocol"}
			}
		}, false},
		{"the kernel has no IPv6 nat table", func(s *fakeSystem) {
			s.tables[backendNFT][ipv6].failOn = func(op string) error {
				if strings.Contains(op, " nat ") {
					return &fakeErr{3, "can't initialize ip6tables table `nat': Table does not exist"}
				}
				return nil
			}
		}, true},
	}
	for _, tt := range tests {
		t.Run("when "+tt.name+", IPv4 is still managed and ready", func(t *testing.T) {
			sys := newFakeSystem(backendNFT)
			tt.break6(sys)
			logs := &logBuffer{}
			rec := newV4OnlyReconciler(t, sys, logs)
			syncOK(t, rec, awsV4, awsV6)
			if n := len(chainRules(t, sys.tables[backendNFT][ipv4], tableNAT, NATChain)); n != 1 {
				t.Errorf("iptables %s has %d rules, want 1", NATChain, n)
			}
			if tt.filterOnly {
				v6 := sys.tables[backendNFT][ipv6]
				if n := len(chainRules(t, v6, tableFilter, FilterChain)); n == 0 {
					t.Error("ip6tables works for filter, but the IPv6 endpoint has no filter rules")
				}
				if n := logs.count("reason=no-host-ip"); n != 1 {
					t.Errorf("no-host-ip warnings: %d, want 1:\n%s", n, logs.buf.String())
				}
				return
			}
			if n := logs.count("reason=family-unusable"); n != 1 {
				t.Errorf("family-unusable warnings: %d, want 1:\n%s", n, logs.buf.String())
			}
		})
	}
	t.Run("a busy xtables lock while probing IPv6 fails New instead of leaving IPv6 endpoints open", func(t *testing.T) {
		sys := newFakeSystem(backendNFT)
		sys.tables[backendNFT][ipv6].failOn = func(op string) error {
			return &fakeErr{4, "Another app is currently holding the xtables lock. Stopped waiting after 20s."}
		}
		_, err := New(Config{HostIPs: []netip.Addr{host4}, ListenPort: 8181, Mode: ModeNFT, sys: sys.system()})
		if err == nil || !strings.Contains(err.Error(), "xtables lock") {
			t.Fatalf("got %v, want the lock error", err)
		}
	})
}
