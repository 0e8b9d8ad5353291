package redirect

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultSyncPeriod is how often Run checks the kernel when given no period.
const DefaultSyncPeriod = 10 * time.Second

// minRetry is the first retry delay after a failed sync; it doubles up to
// the sync period, so start-up does not wait a whole period for a lock.
const minRetry = 500 * time.Millisecond

// Reconciler keeps the kernel's rules equal to the desired rules for the
// current endpoints. Its methods are safe for concurrent use.
type Reconciler struct {
	hostIPs []netip.Addr
	port    uint16
	mark    uint32
	backend backend
	runners map[family]runner
	tables  map[family][]string // the tables usable in each family that has a runner
	sys     system
	log     *slog.Logger
	metrics *metrics
	kick    chan struct{}

	mu           sync.Mutex // guards endpoints, endpointsSet, warnedEndpoints
	endpoints    []Endpoint
	endpointsSet bool
	// warnedEndpoints holds the (endpoint, reason) pairs already logged, so
	// a policy reload does not repeat the warning.
	warnedEndpoints map[string]bool

	syncMu      sync.Mutex // serialises syncs and cleanup; guards the fields below
	applied     string     // key of the rule set the last successful sync left in place
	warned      bool       // the missing conntrack binary was reported
	warnedRules map[string]bool

	ready atomic.Bool
}

// Backend names the iptables back end in use: "nft" or "legacy".
func (r *Reconciler) Backend() string { return string(r.backend) }

// SetEndpoints replaces the endpoints whose traffic is redirected and asks
// Run for a sync. Invalid endpoints (no port, a zone, loopback) are rejected
// as a whole and the previous endpoints stay in force. An endpoint of a
// family without a host IP is accepted: it is dropped instead of redirected,
// or left alone if its family's iptables is unusable, and a warning says so
// once.
func (r *Reconciler) SetEndpoints(eps []Endpoint) error {
	if _, err := desiredRules(eps, r.hostIPs, r.port, r.mark); err != nil {
		return fmt.Errorf("redirect: %w", err)
	}
	r.mu.Lock()
	r.endpoints = slices.Clone(eps)
	r.endpointsSet = true
	r.warnUnredirected(eps)
	r.mu.Unlock()
	r.requestSync()
	return nil
}

// warnUnredirected logs, once per endpoint and reason, the endpoints that
// have no host IP of their family. The caller holds r.mu.
func (r *Reconciler) warnUnredirected(eps []Endpoint) {
	for _, ep := range eps {
		f := familyOf(ep.Addr.Addr().Unmap())
		if _, ok := hostOf(r.hostIPs, f); ok {
			continue
		}
		reason := "no-host-ip"
		msg := "endpoint not redirected: no host IP of its family (--host-ip); pods' traffic to it is dropped instead, so they cannot use it"
		if _, ok := r.runners[f]; !ok {
			reason = "family-unusable"
			msg = "endpoint neither redirected nor dropped: no host IP of its family and its iptables is unusable (is the family disabled in the kernel?); pods that can reach it over this family reach the IMDS directly"
		}
		key := ep.Name + "\x00" + ep.Addr.String() + "\x00" + reason
		if r.warnedEndpoints[key] {
			continue
		}
		r.warnedEndpoints[key] = true
		r.log.Warn(msg, "endpoint", ep.Name, "address", ep.Addr.String(), "family", f.String(), "binary", binaryName(f, r.backend), "reason", reason)
	}
}

// Ready reports whether the last sync left the rules for the current
// endpoints in place. It is false until SetEndpoints and a sync succeeded,
// after a failed sync, and after Cleanup.
func (r *Reconciler) Ready() bool { return r.ready.Load() }

// Sync makes the kernel's rules match the current endpoints once. After the
// first successful sync, a later one that has to change anything although
// the endpoints did not change counts a repair. Before the first
// SetEndpoints it does nothing: a restarted metaguard must not remove the
// rules its predecessor left (fail closed) only because it has not read its
// policy yet.
func (r *Reconciler) Sync(ctx context.Context) error {
	r.syncMu.Lock()
	defer r.syncMu.Unlock()
	r.mu.Lock()
	set := r.endpointsSet
	r.mu.Unlock()
	if !set {
		return nil
	}
	if err := r.sync(ctx); err != nil {
		r.metrics.syncs.WithLabelValues("error").Inc()
		// applied stays: it names the rule set the kernel last held in
		// full, so the sync that completes an interrupted repair (another
		// agent rewriting the tables while ours ran) still counts as one.
		r.ready.Store(false)
		return err
	}
	r.metrics.syncs.WithLabelValues("ok").Inc()
	return nil
}

func (r *Reconciler) sync(ctx context.Context) error {
	r.mu.Lock()
	eps := r.endpoints
	r.mu.Unlock()
	want, err := desiredRules(eps, r.hostIPs, r.port, r.mark)
	if err != nil {
		return fmt.Errorf("redirect: %w", err)
	}
	wantRoutes, err := desiredRouteRules(eps)
	if err != nil {
		return fmt.Errorf("redirect: %w", err)
	}
	key := stateKey(want) + routeRulesKey(wantRoutes)

	var changes []string
	// The routing rules first: on a first install they refuse pods'
	// escaped connections before anything else exists, and on a repair
	// they are the layer that held while the chains were gone. A failure
	// there must not also cost the chains, the layer that redirects: it
	// is returned once they are in place, and the node is not ready.
	var routeErr error
	if r.sys.rules != nil {
		c, err := r.syncRouteRules(ctx, wantRoutes)
		changes = append(changes, c...)
		routeErr = err
	}
	var flush []netip.AddrPort
	for _, f := range families {
		run, ok := r.runners[f]
		if !ok {
			continue // no host IP and unusable: SetEndpoints warned
		}
		// want has no entry for a family without host IP or endpoints: it
		// must hold none of our chains, whatever an earlier run left.
		c, natChanged, err := r.syncFamily(ctx, run, r.tables[f], want[f])
		changes = append(changes, c...)
		if err != nil {
			return errors.Join(routeErr, fmt.Errorf("syncing %s rules (%s): %w", f, r.backend, err))
		}
		if natChanged {
			flush = append(flush, dnatTargets(eps, f)...)
		}
	}
	if routeErr != nil {
		if len(changes) > 0 {
			r.log.Warn("redirect chains installed, routing rules not", "backend", string(r.backend), "changes", changes, "err", routeErr)
		}
		r.flushConntrack(ctx, flush)
		return routeErr
	}
	switch {
	case len(changes) == 0:
	case r.applied == key:
		r.metrics.repairs.Inc()
		r.log.Warn("redirect rules were changed by something else; repaired", "backend", string(r.backend), "changes", changes)
	default:
		r.log.Info("redirect rules installed", "backend", string(r.backend), "endpoints", len(eps), "changes", changes)
	}
	r.applied = key
	r.ready.Store(true)
	r.flushConntrack(ctx, flush)
	return nil
}

// syncFamily brings one family's chains and jumps in tables to rs: a chain
// with no rules is removed with its jump (the nat chain of a family without
// host IP), and everything when rs is empty. natChanged reports whether
// redirection may have started for connections already under way.
func (r *Reconciler) syncFamily(ctx context.Context, run runner, tables []string, rs ruleSet) (changes []string, natChanged bool, err error) {
	if rs.empty() {
		changes, err = removeOwned(ctx, run, hooksIn(tables))
		return changes, false, err
	}
	// Only a family without host IP may lack nat, and it has no nat rules.
	for _, h := range hooksIn(tables) {
		if len(rs[h.chain]) == 0 {
			c, err := removeOwned(ctx, run, []hook{h})
			changes = append(changes, c...)
			if err != nil {
				return changes, false, err
			}
			continue
		}
		c, err := ensureChain(ctx, run, h.table, h.chain, rs[h.chain])
		changes = append(changes, c...)
		if err != nil {
			return changes, false, err
		}
		j, err := ensureJump(ctx, run, h)
		changes = append(changes, j...)
		if err != nil {
			return changes, false, err
		}
		if h.chain == NATChain && len(c)+len(j) > 0 {
			natChanged = true
		}
	}
	return changes, natChanged, nil
}

// dnatTargets lists the endpoint addresses of one family, once each.
func dnatTargets(eps []Endpoint, f family) []netip.AddrPort {
	var out []netip.AddrPort
	for _, ep := range eps {
		ap := netip.AddrPortFrom(ep.Addr.Addr().Unmap(), ep.Addr.Port())
		if familyOf(ap.Addr()) == f && !slices.Contains(out, ap) {
			out = append(out, ap)
		}
	}
	return out
}

func (r *Reconciler) flushConntrack(ctx context.Context, dsts []netip.AddrPort) {
	if r.sys.flusher == nil {
		return
	}
	for _, dst := range dsts {
		err := r.sys.flusher.Flush(ctx, dst)
		switch {
		case err == nil:
		case errors.Is(err, errNoConntrack):
			if !r.warned {
				r.warned = true
				r.log.Warn("conntrack binary not found: pod connections to metadata endpoints opened before the rules existed keep reaching the endpoint until they close", "err", err)
			}
			return
		default:
			r.log.Warn("flushing conntrack entries", "endpoint", dst.String(), "err", err)
		}
	}
}

// stateKey identifies a desired rule set, to tell a repair (the kernel lost
// rules we had installed) from an update (the endpoints changed).
func stateKey(want map[family]ruleSet) string {
	var b strings.Builder
	for _, f := range families {
		rs, ok := want[f]
		if !ok {
			continue
		}
		fmt.Fprintf(&b, "%s\n", f)
		for _, chain := range ownChains {
			for _, rule := range rs[chain] {
				fmt.Fprintf(&b, "%s %q\n", chain, rule)
			}
		}
	}
	return b.String()
}

// Run syncs now, then every period (DefaultSyncPeriod if period <= 0),
// soon after each SetEndpoints, and at once when the kernel reports a
// change that may concern metaguard's rules (nftables notifications with
// the nft back end, routing-rule notifications with either), at most once
// per minEventGap. A failed sync is logged and retried sooner, backing off
// up to the period. It leaves the rules in place when it returns: removing
// them is Cleanup's job, so that metaguard fails closed.
func (r *Reconciler) Run(ctx context.Context, period time.Duration) error {
	if period <= 0 {
		period = DefaultSyncPeriod
	}
	wctx, stopWatchers := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		stopWatchers()
		wg.Wait()
	}()
	if r.sys.watchers != nil {
		for _, w := range r.sys.watchers(r.backend) {
			wg.Go(func() { r.runWatcher(wctx, w, period) })
		}
	}
	retry := minRetry
	for {
		wait := period
		err := r.Sync(ctx)
		// The gap below runs from here, the end of the sync: a sync takes
		// longer than the gap, so measured from its start it would let
		// another program's churn run syncs back to back.
		ended := time.Now()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			wait = min(retry, period)
			retry = min(retry*2, period)
			r.log.Error("syncing redirect rules", "err", err, "retry_in", wait.String())
		} else {
			retry = minRetry
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-timer.C:
			continue
		case <-r.kick:
			timer.Stop()
		}
		// Woken early: leave at least minEventGap between syncs.
		if gap := minEventGap - time.Since(ended); gap > 0 {
			t := time.NewTimer(gap)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
		}
	}
}

// Cleanup removes metaguard's chains and jumps for the families this
// Reconciler manages, and nothing else. It is idempotent. Call it after Run
// has returned, or Run puts the rules back.
func (r *Reconciler) Cleanup(ctx context.Context) error {
	r.syncMu.Lock()
	defer r.syncMu.Unlock()
	r.ready.Store(false)
	r.applied = ""
	var errs []error
	for _, f := range families {
		run, ok := r.runners[f]
		if !ok {
			continue
		}
		changes, err := removeOwned(ctx, run, hooksIn(r.tables[f]))
		if len(changes) > 0 {
			r.log.Info("redirect rules removed", "family", f.String(), "backend", string(r.backend), "changes", changes)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("removing %s rules (%s): %w", f, r.backend, err))
		}
	}
	// The routing rules last: they held while the chains went.
	if r.sys.rules != nil {
		changes, err := removeRouteRules(ctx, r.sys.rules)
		if len(changes) > 0 {
			r.log.Info("routing rules removed", "changes", changes)
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
