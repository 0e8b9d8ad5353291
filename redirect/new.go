package redirect

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
)

// Config is what New needs. HostIPs, ListenPort and Mode come from flags.
type Config struct {
	// HostIPs are the node's own addresses that pods' metadata connections
	// are DNATed to, at most one per family, at least one. An endpoint of a
	// family with no host IP is not redirected but still dropped (fail
	// closed), with a warning.
	HostIPs []netip.Addr
	// ListenPort is the proxy's port on the host IPs.
	ListenPort uint16
	// UpstreamMark is the socket mark of metaguard's own connections to
	// the endpoints (UpstreamDialer's); non-zero, it gets nat OUTPUT
	// rules that keep other agents' NAT off those connections. Zero
	// installs none.
	UpstreamMark uint32
	// Mode is ModeAuto (or empty), ModeNFT or ModeLegacy.
	Mode string
	// Logger receives operational logs; nil discards them.
	Logger *slog.Logger
	// Registerer receives the package's metrics; nil leaves them unregistered.
	Registerer prometheus.Registerer

	// sys replaces the machine in tests; nil means the real one.
	sys *system
}

// New checks the configuration, picks the iptables back end and checks that
// its binaries run and the kernel offers the nat and filter tables for every
// family with a host IP. A family without a host IP is probed too, as its
// endpoints get filter rules: if its binary or its filter table is unusable
// (IPv6 disabled in the kernel), it is left alone with a log line. New
// changes nothing in the kernel. An error here is meant to stop start-up with
// a message an operator can act on.
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
		hostIPs:         hosts,
		port:            cfg.ListenPort,
		mark:            cfg.UpstreamMark,
		backend:         b,
		runners:         map[family]runner{},
		tables:          map[family][]string{},
		sys:             sys,
		log:             log,
		kick:            make(chan struct{}, 1),
		warnedEndpoints: map[string]bool{},
		warnedRules:     map[string]bool{},
	}
	for _, f := range families {
		host, hasHost := hostOf(hosts, f)
		run, tables, err := probeFamily(sys, f, b)
		switch {
		case hasHost && run == nil:
			return nil, fmt.Errorf("%s back end: %s is needed for the %s host IP %s: %w", b, binaryName(f, b), f, host, err)
		case hasHost && err != nil:
			return nil, fmt.Errorf("%s cannot read the %s table (is the kernel's %s netfilter support loaded, and are we root with CAP_NET_ADMIN?): %w", binaryName(f, b), missingTable(tables), f, err)
		case isLockBusy(err):
			// Skipping the family for a busy lock would leave its
			// endpoints open for as long as metaguard runs.
			return nil, fmt.Errorf("probing %s: %w", binaryName(f, b), err)
		case !slices.Contains(tables, tableFilter):
			log.Info("address family unusable and without host IP: its endpoints, if any, can be neither redirected nor dropped", "family", f.String(), "binary", binaryName(f, b), "err", err)
			continue
		case err != nil:
			log.Info("no nat table in an address family without host IP: only its filter rules are managed", "family", f.String(), "binary", binaryName(f, b), "err", err)
		}
		r.runners[f] = run
		r.tables[f] = tables
	}
	if r.metrics, err = newMetrics(cfg.Registerer); err != nil {
		return nil, err
	}
	log.Info("iptables back end chosen", "backend", string(b), "reason", why)
	return r, nil
}

// probeFamily builds a family's runner and lists the tables it can read.
// Reading proves the binary runs, we are allowed to use it, and the kernel
// has the table, before any rule is written. run is nil when the binary is
// missing; err says why a table is not in tables.
func probeFamily(sys system, f family, b backend) (run runner, tables []string, err error) {
	run, err = sys.newRunner(f, b)
	if err != nil {
		return nil, nil, err
	}
	var errs []error
	for _, probe := range []struct{ table, chain string }{{tableNAT, "PREROUTING"}, {tableFilter, "FORWARD"}} {
		if _, err := run.List(probe.table, probe.chain); err != nil {
			errs = append(errs, fmt.Errorf("%s table: %w", probe.table, err))
			continue
		}
		tables = append(tables, probe.table)
	}
	return run, tables, errors.Join(errs...)
}

// missingTable names the first of our tables not in tables.
func missingTable(tables []string) string {
	for _, t := range []string{tableNAT, tableFilter} {
		if !slices.Contains(tables, t) {
			return t
		}
	}
	return ""
}

// isLockBusy reports whether an iptables command gave up waiting for the
// xtables lock (exit status 4, RESOURCE_PROBLEM): a passing condition, not
// a missing feature.
func isLockBusy(err error) bool {
	var e interface{ ExitStatus() int }
	return errors.As(err, &e) && e.ExitStatus() == 4
}

func hostOf(hosts []netip.Addr, f family) (netip.Addr, bool) {
	for _, h := range hosts {
		if familyOf(h) == f {
			return h, true
		}
	}
	return netip.Addr{}, false
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
