package redirect

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nftMessage builds an nftables notification: nfgenmsg, then the table's
// name as attribute 1 and, for a rule or chain, the chain's name, as the
// kernel sends them.
func nftMessage(t *testing.T, msgType uint16, fam uint8, table string, chain ...string) netlink.Message {
	t.Helper()
	data := []byte{fam, 0, 0, 0}
	if table != "" {
		ae := netlink.NewAttributeEncoder()
		ae.String(1, table)
		for _, c := range chain {
			switch msgType {
			case unix.NFT_MSG_NEWRULE, unix.NFT_MSG_DELRULE:
				ae.String(unix.NFTA_RULE_CHAIN, c)
			default:
				ae.Uint64(unix.NFTA_CHAIN_HANDLE, 7) // must not matter
				ae.String(unix.NFTA_CHAIN_NAME, c)
			}
		}
		b, err := ae.Encode()
		if err != nil {
			t.Fatal(err)
		}
		data = append(data, b...)
	}
	return netlink.Message{Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | msgType)}, Data: data}
}

func TestNFTChangeConcernsUs(t *testing.T) {
	tests := []struct {
		name string
		msg  netlink.Message
		want bool
	}{
		{"a rule added to ip nat", nftMessage(t, unix.NFT_MSG_NEWRULE, unix.NFPROTO_IPV4, "nat"), true},
		{"a rule inserted in nat PREROUTING", nftMessage(t, unix.NFT_MSG_NEWRULE, unix.NFPROTO_IPV4, "nat", "PREROUTING"), true},
		{"a rule deleted from metaguard's filter chain", nftMessage(t, unix.NFT_MSG_DELRULE, unix.NFPROTO_IPV4, "filter", FilterChain), true},
		{"metaguard's nat chain deleted", nftMessage(t, unix.NFT_MSG_DELCHAIN, unix.NFPROTO_IPV6, "nat", NATChain), true},
		{"the FORWARD chain's policy changed", nftMessage(t, unix.NFT_MSG_NEWCHAIN, unix.NFPROTO_IPV4, "filter", "FORWARD"), true},
		{"kube-proxy's iptables-nft rules churning in KUBE-SERVICES", nftMessage(t, unix.NFT_MSG_NEWRULE, unix.NFPROTO_IPV4, "nat", "KUBE-SERVICES"), false},
		{"a KUBE-SEP chain made", nftMessage(t, unix.NFT_MSG_NEWCHAIN, unix.NFPROTO_IPV4, "nat", "KUBE-SEP-ABC"), false},
		{"a rule deleted from ip6 filter", nftMessage(t, unix.NFT_MSG_DELRULE, unix.NFPROTO_IPV6, "filter"), true},
		{"a chain flushed away from ip filter", nftMessage(t, unix.NFT_MSG_DELCHAIN, unix.NFPROTO_IPV4, "filter"), true},
		{"the ip nat table deleted by nft flush ruleset", nftMessage(t, unix.NFT_MSG_DELTABLE, unix.NFPROTO_IPV4, "nat"), true},
		{"a rule in ip mangle", nftMessage(t, unix.NFT_MSG_NEWRULE, unix.NFPROTO_IPV4, "mangle"), false},
		{"kube-proxy's nftables table churning", nftMessage(t, unix.NFT_MSG_NEWSETELEM, unix.NFPROTO_IPV4, "kube-proxy"), false},
		{"an inet table named nat", nftMessage(t, unix.NFT_MSG_NEWRULE, unix.NFPROTO_INET, "nat"), false},
		{"the end of a transaction", nftMessage(t, unix.NFT_MSG_NEWGEN, unix.NFPROTO_UNSPEC, ""), false},
		{"a packet trace", nftMessage(t, unix.NFT_MSG_TRACE, unix.NFPROTO_IPV4, "nat"), false},
		{"a message of another netfilter subsystem (conntrack)", netlink.Message{Header: netlink.Header{Type: 1 << 8}, Data: []byte{2, 0, 0, 0}}, false},
		{"a truncated message counts as a change", netlink.Message{Header: netlink.Header{Type: unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_DELRULE}, Data: []byte{2}}, true},
		{"a message without a table counts as a change", nftMessage(t, unix.NFT_MSG_DELRULE, unix.NFPROTO_IPV4, ""), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := nftChangeConcernsUs(tt.msg); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

// ruleMessage builds a routing-rule notification: fib_rule_hdr, then the
// priority, as the kernel sends it (no priority attribute for priority 0).
func ruleMessage(t *testing.T, msgType uint16, priority uint32) netlink.Message {
	t.Helper()
	data := make([]byte, fibRuleHdrLen)
	data[0] = unix.AF_INET
	data[7] = unix.FR_ACT_PROHIBIT
	ae := netlink.NewAttributeEncoder()
	ae.Uint8(unix.FRA_PROTOCOL, ruleProtocol)
	if priority != 0 {
		ae.Uint32(unix.FRA_PRIORITY, priority)
	}
	b, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return netlink.Message{Header: netlink.Header{Type: netlink.HeaderType(msgType)}, Data: append(data, b...)}
}

func TestRuleChangeConcernsUs(t *testing.T) {
	tests := []struct {
		name string
		msg  netlink.Message
		want bool
	}{
		{"our refusal deleted", ruleMessage(t, unix.RTM_DELRULE, rulePriorityRefuse), true},
		{"our skip deleted", ruleMessage(t, unix.RTM_DELRULE, rulePrioritySkipLocal), true},
		{"our nop target deleted", ruleMessage(t, unix.RTM_DELRULE, rulePriorityTarget), true},
		{"a CNI's per-pod rule deleted", ruleMessage(t, unix.RTM_DELRULE, 1536), false},
		{"the local rule at priority 0 deleted (Cilium moves it)", ruleMessage(t, unix.RTM_DELRULE, 0), false},
		{"a rule added at our priority", ruleMessage(t, unix.RTM_NEWRULE, rulePriorityRefuse), false},
		{"a truncated deletion counts as a change", netlink.Message{Header: netlink.Header{Type: unix.RTM_DELRULE}, Data: []byte{2, 0}}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ruleChangeConcernsUs(tt.msg); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestRunRepairsAtOnceOnAChangeNotification(t *testing.T) {
	fx := newFixture(t)
	w := newFakeWatcher()
	fx.sys.watchers = []changeWatcher{w}
	if err := fx.rec.SetEndpoints([]Endpoint{awsV4}); err != nil {
		t.Fatal(err)
	}
	// A period far beyond the test: only the notification can repair.
	runInBackground(t, fx.rec, time.Hour)
	waitFor(t, "readiness", fx.rec.Ready)
	waitFor(t, "the subscription", func() bool { return w.subs.Load() == 1 })

	fx.v4.run("-t nat -F " + NATChain)
	fx.sys.rules.remove(ipv4, func(r routeRule) bool { return r.action == ruleRefuse })
	w.fire <- struct{}{}
	waitFor(t, "one repair", func() bool { return fx.repairs() == 1 })
	waitFor(t, "the rules back", func() bool {
		return len(chainRules(t, fx.v4, "nat", NATChain)) == 1 && fx.sys.rules.refuses(awsV4.Addr, false)
	})
}

// failingWatcher fails its first subscriptions, then blocks until ctx is
// done.
type failingWatcher struct {
	failures int32
	subs     atomic.Int32
}

func (*failingWatcher) String() string { return "failing" }

func (w *failingWatcher) watch(ctx context.Context, _ func()) error {
	if w.subs.Add(1) <= w.failures {
		return errors.New("netlink: operation not permitted")
	}
	<-ctx.Done()
	return nil
}

func TestAWatcherThatFailsIsResubscribedAndAsksForASync(t *testing.T) {
	fx := newFixture(t)
	logs := &logBuffer{}
	fx.rec.log = logs.logger()
	w := &failingWatcher{failures: 3}
	fx.sys.watchers = []changeWatcher{w}
	if err := fx.rec.SetEndpoints([]Endpoint{awsV4}); err != nil {
		t.Fatal(err)
	}
	// Backoff 100ms, 200ms, 400ms: the fourth subscription comes within a
	// second, long before the period.
	runInBackground(t, fx.rec, time.Hour)
	waitFor(t, "a working subscription after three failures", func() bool { return w.subs.Load() == 4 })
	if got := fx.syncs("ok"); got < 2 {
		t.Errorf("syncs{ok} = %v: a failed subscription must ask for a sync, as changes may have been missed", got)
	}
	if n := logs.count("watching for changes failed"); n != 1 {
		t.Errorf("logged %d warnings for one outage, want 1", n)
	}
}
