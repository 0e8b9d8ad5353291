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
	// Audit receives one JSON line per request. Nil discards them.
	Audit io.Writer
	// AuditFlushInterval batches audit lines and writes them this often
	// (and when 64 KiB are pending, and when Serve returns). Zero writes
	// every line as it is made.
	AuditFlushInterval time.Duration
	// Log is the operational logger. Nil discards.
	Log *slog.Logger
	// Registerer receives the request-path metrics. Nil registers none.
	Registerer prometheus.Registerer
	// Transport sends requests upstream; nil builds a bounded one.
	Transport http.RoundTripper
	// DialContext connects the built transport to an endpoint (the
	// redirect package's dialer, which no NAT can capture); nil is a
	// plain net.Dialer. Unused with Transport.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)

	// UpstreamTimeout bounds one forwarded request, response body
	// included, except GCP wait_for_change long polls, which get their
	// own timeout_sec on top. Default 10s.
	UpstreamTimeout time.Duration
	// MaxConns and MaxConnsPerSource bound open client connections.
	// Defaults 4096 and 256.
	MaxConns, MaxConnsPerSource int
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
	cfg      Config
	log      *slog.Logger
	audit    *auditLog
	m        *metrics
	rp       *forwarder
	limiter  *podLimiter
	auditBuf *bufferedAudit // nil when lines are written as they are made
}

// New builds a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Policy == nil || cfg.Identities == nil {
		return nil, errors.New("proxy: Config.Policy and Config.Identities are required")
	}
	if cfg.UpstreamTimeout <= 0 {
		cfg.UpstreamTimeout = 10 * time.Second
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = 4096
	}
	if cfg.MaxConnsPerSource <= 0 {
		cfg.MaxConnsPerSource = 256
	}
	if cfg.MaxResponseBytes <= 0 {
		cfg.MaxResponseBytes = 8 << 20
	}
	if cfg.Audit == nil {
		cfg.Audit = io.Discard
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: log, m: m, limiter: newPodLimiter()}
	auditDst := cfg.Audit
	if cfg.AuditFlushInterval > 0 {
		s.auditBuf = newBufferedAudit(cfg.Audit, log)
		auditDst = s.auditBuf
	}
	s.audit = newAuditLog(auditDst)
	transport := cfg.Transport
	if transport == nil && cfg.DialContext != nil {
		t := newUpstreamTransport()
		t.dial = cfg.DialContext
		transport = t
	}
	s.rp = newForwarder(s, transport)
	return s, nil
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
		// "OPTIONS *" must reach the handler to be refused, not be
		// answered 200 by net/http.
		DisableGeneralOptionsHandler: true,
		ErrorLog:                     slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	ll := &limitListener{
		Listener:    ln,
		originalDst: s.cfg.OriginalDst,
		maxTotal:    s.cfg.MaxConns,
		maxPerSrc:   s.cfg.MaxConnsPerSource,
		m:           s.m,
		bySrc:       map[netip.Addr]int{},
	}
	if s.auditBuf != nil {
		// The flusher outlives the HTTP server: its final flush runs
		// after Shutdown has let every request finish.
		fctx, fcancel := context.WithCancel(context.Background())
		flushed := make(chan struct{})
		go func() { defer close(flushed); s.auditBuf.run(fctx, s.cfg.AuditFlushInterval) }()
		defer func() { fcancel(); <-flushed }()
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
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("serving proxy: %w", err)
}
