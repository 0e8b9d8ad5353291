package redirect

import (
	"context"
	"testing"
)

func TestCleanup(t *testing.T) {
	fx := newFixture(t)
	base6 := fx.v6.save()
	fx.setAndSync(t, awsV4, awsV6)
	for i := range 2 {
		if err := fx.rec.Cleanup(context.Background()); err != nil {
			t.Fatalf("cleanup %d: %v", i+1, err)
		}
		if got := fx.v4.save(); got != fx.base {
			t.Errorf("cleanup %d left:\n%s\nwant:\n%s", i+1, got, fx.base)
		}
		if got := fx.v6.save(); got != base6 {
			t.Errorf("cleanup %d left ip6tables:\n%s\nwant:\n%s", i+1, got, base6)
		}
	}
	if fx.rec.Ready() {
		t.Error("ready after cleanup")
	}
}

func TestCleanupAll(t *testing.T) {
	sys := newFakeSystem(backendNFT, backendLegacy)
	nft4, legacy6 := sys.tables[backendNFT][ipv4], sys.tables[backendLegacy][ipv6]
	nft4.run("-t filter -A FORWARD -j ACCEPT")
	base := nft4.save()
	// Rules in two back ends and families, as after a switch of back end.
	for _, ft := range []*fakeTables{nft4, legacy6} {
		ft.run("-t nat -N " + NATChain)
		ft.run("-t nat -A " + NATChain + " -j RETURN")
		ft.run("-t nat -I PREROUTING 1 " + quote(jumpRule(hookOf(NATChain))))
		ft.run("-t nat -A PREROUTING " + quote(jumpRule(hookOf(NATChain))))
		ft.run("-t filter -N " + FilterChain)
		ft.run("-t filter -I FORWARD 1 " + quote(jumpRule(hookOf(FilterChain))))
	}
	legacy6Base := newFakeTables().save()
	for i := range 2 {
		if err := cleanupAll(context.Background(), discard(), *sys.system()); err != nil {
			t.Fatalf("run %d: %v", i+1, err)
		}
		if got := nft4.save(); got != base {
			t.Errorf("run %d left nft ipv4:\n%s\nwant:\n%s", i+1, got, base)
		}
		if got := legacy6.save(); got != legacy6Base {
			t.Errorf("run %d left legacy ipv6:\n%s", i+1, got)
		}
	}
	if got := sys.tables[backendLegacy][ipv4].touched; len(got) != 0 {
		t.Errorf("cleanup created legacy ipv4 tables %v, where legacy held nothing", got)
	}
}
