package redirect

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Repairing on a change notification, not only on the sync timer. With the
// nft back end the kernel multicasts every nftables change (iptables-nft
// writes nftables), and with either back end every routing-rule change;
// the reconciler subscribes to both and syncs at once when one may concern
// what it owns. The timer stays as the fallback: the legacy back end has no
// notifications, and a notification can be lost (ENOBUFS, which is treated
// as a change).
//
// The subscriptions use the netlink multicast groups directly rather than
// google/nftables' Monitor: the Monitor decodes every rule and set element
// of every table, its object filter does not work in v0.3.0 (it tests
// `flags&1<<type`, which Go reads as `(flags&1)<<type`), and any receive
// error, ENOBUFS included, ends it. Here a notification costs its header
// and one attribute.

// changeWatcher reports changes to the kernel state the reconciler owns.
type changeWatcher interface {
	// String names what is watched, for logs.
	String() string
	// watch subscribes and calls changed for every change that may
	// concern metaguard's rules, and when changes may have been lost. It
	// returns nil once ctx is done, or the error that ended the
	// subscription.
	watch(ctx context.Context, changed func()) error
}

// kernelWatchers are the watchers for a back end in the network namespace
// netns (a file descriptor; 0 is the calling thread's).
func kernelWatchers(b backend, netns int) []changeWatcher {
	ws := []changeWatcher{ruleWatcher{netns: netns}}
	if b == backendNFT {
		ws = append(ws, nftWatcher{netns: netns})
	}
	return ws
}

// nftWatcher watches nftables, where iptables-nft keeps the chains.
type nftWatcher struct{ netns int }

func (nftWatcher) String() string { return "nftables" }

func (w nftWatcher) watch(ctx context.Context, changed func()) error {
	return subscribe(ctx, unix.NETLINK_NETFILTER, []uint32{unix.NFNLGRP_NFTABLES}, w.netns, nftChangeConcernsUs, changed)
}

// ruleWatcher watches the routing-policy database of both families.
type ruleWatcher struct{ netns int }

func (ruleWatcher) String() string { return "routing rules" }

func (w ruleWatcher) watch(ctx context.Context, changed func()) error {
	return subscribe(ctx, unix.NETLINK_ROUTE, []uint32{unix.RTNLGRP_IPV4_RULE, unix.RTNLGRP_IPV6_RULE}, w.netns, ruleChangeConcernsUs, changed)
}

func subscribe(ctx context.Context, proto int, groups []uint32, netns int, relevant func(netlink.Message) bool, changed func()) error {
	c, err := netlink.Dial(proto, &netlink.Config{NetNS: netns})
	if err != nil {
		return fmt.Errorf("opening a netlink socket: %w", err)
	}
	defer c.Close()
	// A group of a family the kernel lacks (IPv6 disabled at boot) may
	// refuse the join; the others still tell.
	var joinErrs []error
	for _, g := range groups {
		if err := c.JoinGroup(g); err != nil {
			joinErrs = append(joinErrs, fmt.Errorf("joining netlink group %d: %w", g, err))
		}
	}
	if len(joinErrs) == len(groups) {
		return errors.Join(joinErrs...)
	}
	// The default receive buffer is kept: an iptables-restore of a large
	// ruleset (kube-proxy's) notifies every rule at once and may overflow
	// it, which costs one sync (ENOBUFS below), not a missed repair, and
	// a larger buffer would be kernel memory charged to the container.
	// Close unblocks the Receive below.
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	for {
		msgs, err := c.Receive()
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, unix.ENOBUFS):
			// The kernel dropped notifications: anything may have changed.
			changed()
			continue
		case err != nil:
			return fmt.Errorf("receiving notifications: %w", err)
		}
		for _, m := range msgs {
			if relevant(m) {
				changed()
				break
			}
		}
	}
}

// nftChangeConcernsUs reports whether an nftables notification may concern
// metaguard's chains: a change to the ip or ip6 nat or filter table, where
// iptables-nft keeps them, and there to a built-in chain (where the jumps
// are, and where a rule above them would take traffic first) or one of
// metaguard's own. Other tables (kube-proxy's nftables mode, firewalld's)
// cannot hold metaguard's rules, and a sync could not undo what they do;
// other chains (KUBE-SERVICES and the like, which a tenant's Services
// churn) see traffic only after metaguard's jumps. Their churn costs
// nothing. A message that cannot be read, or names no chain (a table's
// deletion), counts as a change.
func nftChangeConcernsUs(m netlink.Message) bool {
	if uint16(m.Header.Type)>>8 != unix.NFNL_SUBSYS_NFTABLES {
		return false
	}
	switch uint16(m.Header.Type) & 0xff {
	case unix.NFT_MSG_NEWGEN, unix.NFT_MSG_TRACE:
		return false // a transaction's end, a packet trace: no table
	}
	// struct nfgenmsg: family, version, resource id.
	if len(m.Data) < 4 {
		return true
	}
	switch m.Data[0] {
	case unix.NFPROTO_IPV4, unix.NFPROTO_IPV6:
	default:
		return false
	}
	ad, err := netlink.NewAttributeDecoder(m.Data[4:])
	if err != nil {
		return true
	}
	msgType := uint16(m.Header.Type) & 0xff
	table, chain := "", ""
	for ad.Next() {
		switch {
		case ad.Type() == 1:
			// The table's name in every message about a table or something
			// in one (NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE,
			// NFTA_SET_TABLE, ...).
			table = ad.String()
		case ad.Type() == unix.NFTA_RULE_CHAIN && (msgType == unix.NFT_MSG_NEWRULE || msgType == unix.NFT_MSG_DELRULE),
			ad.Type() == unix.NFTA_CHAIN_NAME && (msgType == unix.NFT_MSG_NEWCHAIN || msgType == unix.NFT_MSG_DELCHAIN):
			chain = ad.String()
		}
	}
	if ad.Err() != nil || table == "" {
		return true
	}
	if table != tableNAT && table != tableFilter {
		return false
	}
	return chain == "" || slices.Contains(builtinChains[table], chain) || slices.Contains(ownChains, chain)
}

// fibRuleHdrLen is the size of struct fib_rule_hdr, which precedes a rule
// notification's attributes.
const fibRuleHdrLen = 12

// ruleChangeConcernsUs reports whether a routing-rule notification is the
// deletion of a rule at metaguard's priorities. Additions need no repair,
// and a deletion elsewhere leaves metaguard's rules as they were.
func ruleChangeConcernsUs(m netlink.Message) bool {
	if m.Header.Type != unix.RTM_DELRULE {
		return false
	}
	if len(m.Data) < fibRuleHdrLen {
		return true
	}
	ad, err := netlink.NewAttributeDecoder(m.Data[fibRuleHdrLen:])
	if err != nil {
		return true
	}
	for ad.Next() {
		if ad.Type() == unix.FRA_PRIORITY {
			p := ad.Uint32()
			return p >= rulePrioritySkipLocal && p <= rulePriorityTarget
		}
	}
	// The kernel leaves the priority out for priority 0, which is not ours.
	return ad.Err() != nil
}

// Bounds of a watcher's resubscription backoff.
const (
	minResubscribe = 100 * time.Millisecond
	// minEventGap bounds how often notifications can make the reconciler
	// sync: an agent rewriting its rules in a loop costs at most one sync
	// per gap, not a sync per rule.
	minEventGap = 50 * time.Millisecond
)

// runWatcher keeps one watcher subscribed until ctx is done, asking for a
// sync on every relevant change. When the subscription fails it asks for
// one too (changes may have been missed meanwhile), logs once per outage,
// and subscribes again after a backoff that doubles up to period.
func (r *Reconciler) runWatcher(ctx context.Context, w changeWatcher, period time.Duration) {
	backoff := minResubscribe
	failing := false
	for {
		start := time.Now()
		err := w.watch(ctx, r.requestSync)
		if ctx.Err() != nil {
			return
		}
		r.requestSync()
		if time.Since(start) > period {
			backoff = minResubscribe // it worked for a while: a new outage
			failing = false
		}
		if !failing {
			failing = true
			r.log.Warn("watching for changes failed; repairs wait for the sync period until it works again", "watching", w.String(), "err", err, "retry_in", backoff.String())
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(backoff*2, period)
	}
}

// requestSync asks Run for a sync soon; requests made while one is
// pending are folded into it.
func (r *Reconciler) requestSync() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}
