package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"metaguard.dev/metaguard/identity"
	"metaguard.dev/metaguard/proxy/audit"
	"metaguard.dev/metaguard/proxy/policy"
)

// Config wires a Server. Policy and Identities are required.
type Config struct {
	// Policy returns the policy in force; it is called once per request so
	// a reload applies to the next request.
	Policy func() *policy.Policy
	// Identities maps a source address to a pod.
	Identities identity.Resolver
	// OriginalDst returns the address a redirected connection was bound
	// for (SO_ORIGINAL_DST). Nil means the listener's own address, for a
	// listener that serves one endpoint without redirect.
	OriginalDst func(net.Conn) (netip.AddrPort, error)
	// Audit receives one record per request. Nil discards them. The
	// caller runs and closes it.
	Audit *audit.Writer
	// Log is the operational logger. Nil discards.
	Log *slog.Logger
	// Registerer receives the request-path metrics. Nil registers none.
	Registerer prometheus.Registerer
	// Transport sends requests upstream; nil builds a bounded one that
	// dials through DialContext.
	Transport http.RoundTripper
	// DialContext connects to an endpoint; nil is a plain net.Dialer. cmd
	// passes one that keeps NAT away from metaguard's own upstream flows.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// Budget bounds connections, requests in flight and strip buffers;
	// the zero value is BudgetFor(32 MiB).
	Budget Budget

	// UpstreamTimeout bounds one forwarded request, response body
	// included, except GCP wait_for_change long polls, which get their
	// own timeout_sec on top. Default 10s.
	UpstreamTimeout time.Duration
	// MaxResponseBytes bounds a relayed response body. Default 8 MiB.
	MaxResponseBytes int64
}

// Limits that are not worth a knob.
const (
	// readHeaderTimeout ends slowloris: a client that does not finish its
	// headers in time loses the connection.
	readHeaderTimeout = 5 * time.Second
	// maxHeaderBytes is 16 KiB minus the 4 KiB net/http adds on top of
	// MaxHeaderBytes before answering 431.
	maxHeaderBytes = 12 << 10
	idleTimeout    = 60 * time.Second
	// maxBodyBytes bounds PUT bodies; the IMDSv2 token PUT has none.
	maxBodyBytes = 4 << 10
	// maxStripBytes bounds a response held in memory to be stripped.
	maxStripBytes = 1 << 20
	// maxLongPoll caps a GCP wait_for_change request without timeout_sec
	// or with a larger one.
	maxLongPoll     = 10 * time.Minute
	shutdownTimeout = 10 * time.Second
)

// Server is the metadata proxy: an http.Handler plus its listener limits.
type Server struct {
	cfg     Config
	log     *slog.Logger
	m       *metrics
	rp      *forwarder
	limiter *podLimiter
	lim     *limits
}

// New builds a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Policy == nil || cfg.Identities == nil {
		return nil, errors.New("proxy: Config.Policy and Config.Identities are required")
	}
	if cfg.UpstreamTimeout <= 0 {
		cfg.UpstreamTimeout = 10 * time.Second
	}
	if cfg.Budget == (Budget{}) {
		b, err := BudgetFor(32 << 20)
		if err != nil {
			return nil, err
		}
		cfg.Budget = b
	}
	if cfg.MaxResponseBytes <= 0 {
		cfg.MaxResponseBytes = 8 << 20
	}
	if cfg.Audit == nil {
		discard, err := audit.NewWriter(io.Discard, audit.Options{})
		if err != nil {
			return nil, err
		}
		cfg.Audit = discard
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: log, m: m, limiter: newPodLimiter(), lim: newLimits(cfg.Budget)}
	m.ensureSeries(cfg.Policy())
	s.rp = newForwarder(s, cfg.Transport)
	return s, nil
}

// PolicyChanged makes the alerted series of p's endpoints before p is in
// force, so that its first event is an increase rate() sees and not the
// birth of a series at 1. Register it with policy.Store.OnChange; it never
// refuses a policy.
func (s *Server) PolicyChanged(p *policy.Policy) error {
	s.m.ensureSeries(p)
	return nil
}

// Serve accepts connections on ln until ctx is done, then shuts down
// gracefully within a deadline.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ConnContext:       connContext,
		ConnState:         trackConnState,
		// "OPTIONS *" must reach the handler to be refused, not be
		// answered 200 by net/http.
		DisableGeneralOptionsHandler: true,
		ErrorLog:                     slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	ll := &limitListener{
		Listener:    ln,
		originalDst: s.cfg.OriginalDst,
		maxTotal:    s.cfg.Budget.Conns,
		maxPerSrc:   s.cfg.Budget.ConnsPerSource,
		m:           s.m.connMetrics,
		bySrc:       map[netip.Addr]map[*limitedConn]struct{}{},
	}
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		select {
		case <-ctx.Done():
		case <-done:
			return
		}
		sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			srv.Close()
		}
	}()
	err := srv.Serve(ll)
	close(done)
	<-stopped
	// The upstream side's idle connections (and their goroutines) end
	// with the server.
	if ci, ok := s.rp.rt.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("serving proxy: %w", err)
}
