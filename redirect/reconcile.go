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

	"github.com/prometheus/client_golang/prometheus"
)

// Config is what New needs. HostIPs, ListenPort and Mode come from flags.
type Config struct {
	// HostIPs are the node's own addresses that pods' metadata connections
	// are DNATed to, at most one per family. An endpoint of a family with no
	// host IP is rejected.
	HostIPs []netip.Addr
	// ListenPort is the proxy's port on the host IPs.
	ListenPort uint16
	// Mode is ModeAuto (or empty), ModeNFT or ModeLegacy.
	Mode string
	// Logger receives operational logs; nil discards them.
	Logger *slog.Logger
	// Registerer receives the package's metrics; nil leaves them unregistered.
	Registerer prometheus.Registerer

	// sys replaces the machine in tests; nil means the real one.
	sys *system
}

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
	backend backend
	runners map[family]runner
	sys     system
	log     *slog.Logger
	metrics *metrics
	kick    chan struct{}

	mu           sync.Mutex // guards endpoints, endpointsSet
	endpoints    []Endpoint
	endpointsSet bool

	syncMu  sync.Mutex // serialises syncs and cleanup; guards the fields below
	applied string     // key of the rule set the last successful sync left in place
	warned  bool       // the missing conntrack binary was reported

	ready atomic.Bool
}

// New checks the configuration, picks the iptables back end and checks that
// its binaries run and the kernel offers the nat and filter tables for every
// configured family. It changes nothing in the kernel. An error here is meant
// to stop start-up with a message an operator can act on.
func New(cfg Config) (*Reconciler, error) {
	hosts, err := checkHostIPs(cfg.HostIPs)
	if err != nil {
		return nil, err
	}
	if cfg.ListenPort == 0 {
		return nil, errors.New("redirect: listen port must not be 0")
	}
	sys := hostSystem()
	if cfg.sys != nil {
		sys = *cfg.sys
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b, why, err := resolveMode(cfg.Mode, sys)
	if err != nil {
		return nil, fmt.Errorf("choosing the iptables back end: %w", err)
	}
	r := &Reconciler{
		hostIPs: hosts,
		port:    cfg.ListenPort,
		backend: b,
		runners: map[family]runner{},
		sys:     sys,
		log:     log,
		kick:    make(chan struct{}, 1),
	}
	for _, h := range hosts {
		f := familyOf(h)
		run, err := sys.newRunner(f, b)
		if err != nil {
			return nil, fmt.Errorf("%s back end: %s is needed for the %s host IP %s: %w", b, binaryName(f, b), f, h, err)
		}
		// Reading both tables proves the binary runs, we are allowed to use
		// it, and the kernel has the tables, before any rule is written.
		for _, probe := range []struct{ table, chain string }{{tableNAT, "PREROUTING"}, {tableFilter, "FORWARD"}} {
			if _, err := run.List(probe.table, probe.chain); err != nil {
				return nil, fmt.Errorf("%s cannot read the %s table (is the kernel's %s netfilter support loaded, and are we root with CAP_NET_ADMIN?): %w", binaryName(f, b), probe.table, f, err)
			}
		}
		r.runners[f] = run
	}
	if r.metrics, err = newMetrics(cfg.Registerer); err != nil {
		return nil, err
	}
	log.Info("iptables back end chosen", "backend", string(b), "reason", why)
	return r, nil
}

func checkHostIPs(ips []netip.Addr) ([]netip.Addr, error) {
	seen := map[family]netip.Addr{}
	var out []netip.Addr
	for _, ip := range ips {
		ip = ip.Unmap()
		switch {
		case !ip.IsValid():
			return nil, errors.New("redirect: invalid host IP")
		case ip.IsLoopback():
			// DNAT to 127.0.0.1 only works with route_localnet=1, which
			// exposes every localhost service to the network (CVE-2020-8558).
			return nil, fmt.Errorf("redirect: host IP %s is a loopback address; use the node's own address", ip)
		case ip.IsUnspecified() || ip.IsMulticast() || ip.Zone() != "":
			return nil, fmt.Errorf("redirect: host IP %s is not a unicast node address", ip)
		}
		if prev, ok := seen[familyOf(ip)]; ok {
			return nil, fmt.Errorf("redirect: two %s host IPs (%s, %s): give at most one per family", familyOf(ip), prev, ip)
		}
		seen[familyOf(ip)] = ip
		out = append(out, ip)
	}
	if len(out) == 0 {
		return nil, errors.New("redirect: no host IP: pods' metadata traffic needs a node address to be DNATed to")
	}
	return out, nil
}

// Backend names the iptables back end in use: "nft" or "legacy".
func (r *Reconciler) Backend() string { return string(r.backend) }

// SetEndpoints replaces the endpoints whose traffic is redirected and asks
// Run for a sync. Invalid endpoints (such as one of a family without a host
// IP) are rejected as a whole and the previous endpoints stay in force.
func (r *Reconciler) SetEndpoints(eps []Endpoint) error {
	if _, err := desiredRules(eps, r.hostIPs, r.port); err != nil {
		return fmt.Errorf("redirect: %w", err)
	}
	r.mu.Lock()
	r.endpoints = slices.Clone(eps)
	r.endpointsSet = true
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default: // a sync is already pending; it will read the new endpoints
	}
	return nil
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
		r.ready.Store(false)
		r.applied = ""
		return err
	}
	r.metrics.syncs.WithLabelValues("ok").Inc()
	return nil
}

func (r *Reconciler) sync(ctx context.Context) error {
	r.mu.Lock()
	eps := r.endpoints
	r.mu.Unlock()
	want, err := desiredRules(eps, r.hostIPs, r.port)
	if err != nil {
		return fmt.Errorf("redirect: %w", err)
	}
	key := stateKey(want)

	var changes []string
	var flush []netip.AddrPort
	for _, f := range families {
		rs, ok := want[f]
		if !ok {
			continue
		}
		c, natChanged, err := r.syncFamily(ctx, r.runners[f], rs)
		changes = append(changes, c...)
		if err != nil {
			return fmt.Errorf("syncing %s rules (%s): %w", f, r.backend, err)
		}
		if natChanged {
			flush = append(flush, dnatTargets(eps, f)...)
		}
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

// syncFamily brings one family's chains and jumps to rs, or removes them all
// when rs is empty. natChanged reports whether redirection may have started
// for connections already under way.
func (r *Reconciler) syncFamily(ctx context.Context, run runner, rs ruleSet) (changes []string, natChanged bool, err error) {
	if rs.empty() {
		changes, err = removeOwned(ctx, run, []string{tableNAT, tableFilter})
		return changes, false, err
	}
	for _, h := range hooks {
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
		if h.table == tableNAT && len(c)+len(j) > 0 {
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
		for _, chain := range []string{FilterChain, NATChain} {
			for _, rule := range rs[chain] {
				fmt.Fprintf(&b, "%s %q\n", chain, rule)
			}
		}
	}
	return b.String()
}

// Run syncs now, then every period (DefaultSyncPeriod if period <= 0) and
// soon after each SetEndpoints, until ctx is done. A failed sync is logged
// and retried sooner, backing off up to the period. It leaves the rules in
// place when it returns: removing them is Cleanup's job, so that metaguard
// fails closed.
func (r *Reconciler) Run(ctx context.Context, period time.Duration) error {
	if period <= 0 {
		period = DefaultSyncPeriod
	}
	retry := minRetry
	for {
		wait := period
		if err := r.Sync(ctx); err != nil {
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
		case <-r.kick:
			timer.Stop()
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
		changes, err := removeOwned(ctx, run, []string{tableNAT, tableFilter})
		if len(changes) > 0 {
			r.log.Info("redirect rules removed", "family", f.String(), "backend", string(r.backend), "changes", changes)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("removing %s rules (%s): %w", f, r.backend, err))
		}
	}
	return errors.Join(errs...)
}
