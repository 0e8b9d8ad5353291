package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	"k8s.io/klog/v2"

	"metaguard.dev/metaguard/identity/podindex"
	"metaguard.dev/metaguard/proxy"
	"metaguard.dev/metaguard/proxy/audit"
	"metaguard.dev/metaguard/proxy/policy"
	"metaguard.dev/metaguard/redirect"
)

// runOptions are the daemon's flags.
type runOptions struct {
	config          string
	nodeName        string
	hostIPs         string
	listen          string
	metricsListen   string
	kubeconfig      string
	iptables        bool
	iptablesMode    string
	syncPeriod      time.Duration
	cleanupOnExit   bool
	identityWait    time.Duration
	auditLog        string
	auditFlush      time.Duration
	auditDenyRate   float64
	auditDenyBurst  int
	logLevel        string
	upstreamTimeout time.Duration
	reloadInterval  time.Duration
	nodeTaint       string
	upstreamMark    markFlag
	runDir          string
}

// AddFlags registers the flags of docs/design.md, with NODE_NAME and HOST_IP
// from the environment as defaults (the DaemonSet sets them through the
// downward API).
func (o *runOptions) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.config, "config", "/etc/metaguard/policy.yaml", "policy file; reloaded when it changes (ConfigMap symlink swaps included)")
	fs.StringVar(&o.nodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name; only pods with spec.nodeName equal to it are watched [NODE_NAME]")
	fs.StringVar(&o.hostIPs, "host-ip", os.Getenv("HOST_IP"), "node IP the redirect DNATs to; IPv4, IPv6 or both comma-separated [HOST_IP]")
	// Not 8181: kube2iam and kiam default to it, and metaguard often
	// replaces them node by node.
	fs.StringVar(&o.listen, "listen", ":8169", "proxy address; every metadata endpoint is DNATed to its port")
	fs.StringVar(&o.metricsListen, "metrics-listen", ":9181", "address of /metrics, /healthz and /readyz")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster service account)")
	fs.BoolVar(&o.iptables, "iptables", true, "manage the redirect rules")
	fs.StringVar(&o.iptablesMode, "iptables-mode", redirect.ModeAuto, "iptables back end: auto (the one holding the node's rules), nft or legacy")
	fs.DurationVar(&o.syncPeriod, "sync-period", redirect.DefaultSyncPeriod, "how often the rules are checked and repaired")
	fs.BoolVar(&o.cleanupOnExit, "cleanup-on-exit", false, "remove the rules on exit (default keeps them: pods stay cut off from the IMDS while metaguard restarts)")
	fs.DurationVar(&o.identityWait, "identity-wait", time.Second, "how long a request from an unknown source IP waits for its pod to appear in the cache")
	fs.StringVar(&o.auditLog, "audit-log", "-", "audit log destination: - for stdout, or a file (appended; reopened on SIGHUP)")
	fs.DurationVar(&o.auditFlush, "audit-flush-interval", 100*time.Millisecond, "audit lines are written in batches this often (0: each line as it is made, one write per request)")
	fs.Float64Var(&o.auditDenyRate, "audit-deny-rate", 5, "denial lines per second one source address may write to the audit log; beyond it (and its burst) they are counted and summed up every 10s (0: no limit). Allowed, stripped, audit-deny and credential-path lines are never left out")
	fs.IntVar(&o.auditDenyBurst, "audit-deny-burst", 50, "denial lines one source may write at once before --audit-deny-rate applies")
	fs.StringVar(&o.logLevel, "log-level", "info", "operational log level: debug, info, warn, error")
	fs.DurationVar(&o.upstreamTimeout, "upstream-timeout", 10*time.Second, "bound on one forwarded request (GCP long polls get their timeout_sec on top)")
	fs.DurationVar(&o.reloadInterval, "reload-interval", time.Second, "how often the policy file is checked for changes")
	fs.StringVar(&o.nodeTaint, "node-taint", "", "taint key to remove from this node once rules are in place and the proxy is ready (needs patch on nodes)")
	o.upstreamMark = redirect.DefaultUpstreamMark
	fs.Var(&o.upstreamMark, "upstream-mark", "socket mark of metaguard's connections to the endpoints, which its nat OUTPUT rules keep other agents' NAT off; bits no other node agent uses (0: no mark, the conntrack peer check still runs)")
	runDir := os.Getenv("METAGUARD_RUN_DIR")
	if runDir == "" {
		runDir = "/run/metaguard"
	}
	fs.StringVar(&o.runDir, "run-dir", runDir, "directory where the chosen iptables back end is recorded for the image's iptables wrapper, when it exists [METAGUARD_RUN_DIR]")
}

// markFlag is a socket mark given in hex (0x1000) or decimal.
type markFlag uint32

func (m *markFlag) String() string { return fmt.Sprintf("0x%x", uint32(*m)) }

func (m *markFlag) Set(s string) error {
	v, err := strconv.ParseUint(s, 0, 32)
	if err != nil {
		return fmt.Errorf("want a 32-bit number such as 0x1000: %w", err)
	}
	*m = markFlag(v)
	return nil
}

type runConfig struct {
	hostIPs    []netip.Addr
	listenPort uint16
	level      slog.Level
}

func (o *runOptions) validate() (runConfig, error) {
	var c runConfig
	if o.nodeName == "" {
		return c, usageErr("--node-name (or NODE_NAME) is required: metaguard watches only this node's pods")
	}
	for _, s := range strings.Split(o.hostIPs, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return c, usageErr("--host-ip: %q is not an IP address", s)
		}
		c.hostIPs = append(c.hostIPs, ip.Unmap())
	}
	if o.iptables && len(c.hostIPs) == 0 {
		return c, usageErr("--host-ip (or HOST_IP) is required with --iptables: it is where pod metadata traffic is DNATed to")
	}
	_, port, err := net.SplitHostPort(o.listen)
	if err != nil {
		return c, usageErr("--listen: %v", err)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return c, usageErr("--listen needs a fixed port, got %q", o.listen)
	}
	c.listenPort = uint16(p)
	if err := c.level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return c, usageErr("--log-level: %v", err)
	}
	if o.identityWait < 0 || o.auditFlush < 0 || o.syncPeriod <= 0 || o.upstreamTimeout <= 0 || o.reloadInterval <= 0 {
		return c, usageErr("durations must be positive (--identity-wait may be 0)")
	}
	if o.auditDenyRate < 0 || o.auditDenyBurst < 0 {
		return c, usageErr("--audit-deny-rate and --audit-deny-burst must not be negative")
	}
	return c, nil
}

func runDaemon(ctx context.Context, args []string, stderr io.Writer) error {
	var o runOptions
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	o.AddFlags(fs)
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageErr("run takes no arguments, got %q", fs.Args())
	}
	c, err := o.validate()
	if err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: c.level}))
	// client-go logs through klog; one log stream, one format.
	klog.SetSlogLogger(log)
	log.Info("metaguard starting", "version", version, "revision", revision, "node", o.nodeName, "config", o.config)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), buildInfo())

	// An invalid policy does not stop start-up: the store fails closed
	// (rules for the well-known endpoints, every request denied, not
	// ready) and takes up the first valid policy mounted.
	store, err := policy.NewStore(o.config, log, reg)
	if err != nil {
		return err
	}
	auditFile, err := audit.OpenFile(o.auditLog)
	if err != nil {
		return err
	}
	defer auditFile.Close()
	auditW, err := audit.NewWriter(auditFile, audit.Options{
		FlushInterval: o.auditFlush, DenialRate: o.auditDenyRate, DenialBurst: o.auditDenyBurst,
		Log: log, Registerer: reg,
	})
	if err != nil {
		return err
	}
	// After every request has been written: Serve has drained them.
	defer auditW.Close()

	client, err := kubeClient(o.kubeconfig)
	if err != nil {
		return err
	}
	index, err := podindex.New(client, podindex.Options{NodeName: o.nodeName, Wait: o.identityWait, Logger: log}, reg)
	if err != nil {
		return err
	}

	dialer, err := redirect.NewUpstreamDialer(redirect.DialerConfig{Mark: uint32(o.upstreamMark), Logger: log, Registerer: reg})
	if err != nil {
		return err
	}
	defer dialer.Close()

	var rec *redirect.Reconciler
	if o.iptables {
		rec, err = redirect.New(redirect.Config{HostIPs: c.hostIPs, ListenPort: c.listenPort, UpstreamMark: uint32(o.upstreamMark), Mode: o.iptablesMode, Logger: log, Registerer: reg})
		if err != nil {
			return fmt.Errorf("setting up redirect rules: %w", err)
		}
		recordBackend(o.runDir, rec.Backend(), log)
		if err := rec.SetEndpoints(redirectEndpoints(store.Current())); err != nil {
			return fmt.Errorf("setting up redirect rules: %w", err)
		}
		store.OnChange(func(p *policy.Policy) error {
			// The kernel must follow the policy's endpoints; if it cannot
			// take them (an invalid address), the policy is refused rather
			// than have the proxy and the kernel disagree.
			return rec.SetEndpoints(redirectEndpoints(p))
		})
	}

	budget, err := requestPathBudget(log)
	if err != nil {
		return err
	}
	srv, err := proxy.New(proxy.Config{
		Budget:          budget,
		Policy:          store.Current,
		Identities:      index,
		OriginalDst:     originalDst(o.iptables),
		Audit:           auditW,
		Log:             log,
		Registerer:      reg,
		UpstreamTimeout: o.upstreamTimeout,
		DialContext:     dialer.DialContext,
	})
	if err != nil {
		return err
	}
	store.OnChange(srv.PolicyChanged)
	proxyLn, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listening for pods: %w", err)
	}
	metricsLn, err := net.Listen("tcp", o.metricsListen)
	if err != nil {
		proxyLn.Close()
		return fmt.Errorf("listening for metrics: %w", err)
	}

	ready := func() []string {
		var missing []string
		if err := store.Current().Invalid(); err != nil {
			missing = append(missing, "no valid policy (every request is denied): "+oneLine(err))
		}
		if !index.HasSynced() {
			missing = append(missing, "pod and namespace informers not synced")
		}
		if rec != nil && !rec.Ready() {
			missing = append(missing, "redirect rules not in place")
		}
		return missing
	}

	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "metaguard_ready",
		Help: "1 when /readyz answers 200 (a valid policy, synced informers, rules in place), else 0.",
	}, func() float64 {
		if len(ready()) == 0 {
			return 1
		}
		return 0
	}))

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return srv.Serve(gctx, proxyLn) })
	g.Go(func() error { return proxy.ServeAdmin(gctx, metricsLn, adminHandler(reg, ready), reg, log) })
	g.Go(func() error { return index.Run(gctx) })
	g.Go(func() error { store.Watch(gctx, o.reloadInterval); return nil })
	g.Go(func() error { auditW.Run(gctx); return nil })
	g.Go(func() error { onHangup(gctx, auditFile, store, log); return nil })
	if rec != nil {
		g.Go(func() error { return rec.Run(gctx, o.syncPeriod) })
	}
	if o.nodeTaint != "" {
		g.Go(func() error { return removeTaintWhenReady(gctx, client, o.nodeName, o.nodeTaint, ready, log) })
	}
	err = g.Wait()
	log.Info("metaguard stopping", "error", err)

	if rec != nil && o.cleanupOnExit {
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if cerr := rec.Cleanup(cctx); cerr != nil {
			err = errors.Join(err, fmt.Errorf("removing rules on exit: %w", cerr))
		}
	}
	if err != nil && ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// recordBackend tells the image's iptables wrapper which back end to run,
// so that an operator's `kubectl exec ... iptables -L` sees metaguard's
// rules. Outside the DaemonSet (no run directory) there is no wrapper.
func recordBackend(dir, backend string, log *slog.Logger) {
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		log.Debug("no run directory: the iptables back end is not recorded", "run_dir", dir)
		return
	}
	if err := redirect.WriteBackendFile(dir, backend); err != nil {
		log.Warn("the iptables wrapper will ask metaguard iptables-backend instead, which ignores --iptables-mode", "err", err)
	}
}

func redirectEndpoints(p *policy.Policy) []redirect.Endpoint {
	eps := make([]redirect.Endpoint, 0, len(p.Endpoints()))
	for _, e := range p.Endpoints() {
		eps = append(eps, redirect.Endpoint{Name: e.Name, Addr: e.Addr})
	}
	return eps
}

// originalDst reads SO_ORIGINAL_DST when the redirect is ours; without it
// a connection is bound for where it arrived.
func originalDst(iptables bool) func(net.Conn) (netip.AddrPort, error) {
	if !iptables {
		return nil
	}
	return redirect.OriginalDst
}

// adminHandler serves /metrics, /healthz and /readyz.
func adminHandler(reg *prometheus.Registry, ready func() []string) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if missing := ready(); len(missing) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "not ready: "+strings.Join(missing, "; ")+"\n")
			return
		}
		io.WriteString(w, "ok\n")
	})
	return mux
}

// defaultMemLimit is what the request path is budgeted against when
// GOMEMLIMIT is not set: the DaemonSet's container limit.
const defaultMemLimit = 64 << 20

// requestPathBudget derives the proxy's caps from the Go memory limit
// (GOMEMLIMIT), so that connections, requests in flight and strip buffers
// together fit under it.
func requestPathBudget(log *slog.Logger) (proxy.Budget, error) {
	limit := debug.SetMemoryLimit(-1)
	if limit == math.MaxInt64 {
		log.Warn("GOMEMLIMIT is not set: the request path is budgeted for a 64 MiB limit; set GOMEMLIMIT below the container's memory limit")
		limit = defaultMemLimit
	}
	b, err := proxy.BudgetFor(proxy.DefaultRequestPathBytes(limit))
	if err != nil {
		return b, fmt.Errorf("GOMEMLIMIT %d: %w", limit, err)
	}
	log.Info("request path budget", "memory_limit", limit, "connections", b.Conns, "connections_per_source", b.ConnsPerSource,
		"in_flight", b.InFlight, "in_flight_per_source", b.InFlightPerSource, "long_polls", b.LongPolls,
		"long_polls_per_source", b.LongPollsPerSource,
		"strip_bytes", b.StripBytes, "strip_bytes_per_source", b.StripBytesPerSource)
	return b, nil
}
