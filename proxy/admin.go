package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The admin listener (/metrics, /healthz, /readyz) is reachable from every
// pod at the node's address, so it is bounded like the proxy: a few
// connections, fewer per source, short timeouts and small headers. A
// scraper and the kubelet's probes need one or two connections each.
const (
	adminMaxConns          = 64
	adminMaxConnsPerSource = 8
	adminMaxHeaderBytes    = 4 << 10
	adminIdleTimeout       = 30 * time.Second
	adminWriteTimeout      = 30 * time.Second
)

// ServeAdmin serves h on ln until ctx is done, with the admin listener's
// limits; its connection metrics (metaguard_admin_connections_*) go to reg.
func ServeAdmin(ctx context.Context, ln net.Listener, h http.Handler, reg prometheus.Registerer, log *slog.Logger) error {
	cm := newConnMetrics("metaguard_admin_", "Admin (metrics and health)")
	if reg != nil {
		for _, c := range cm.collectors() {
			if err := reg.Register(c); err != nil {
				return fmt.Errorf("registering admin listener metrics: %w", err)
			}
		}
	}
	ll := &limitListener{Listener: ln, maxTotal: adminMaxConns, maxPerSrc: adminMaxConnsPerSource, m: cm,
		bySrc: map[netip.Addr]map[*limitedConn]struct{}{}}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readHeaderTimeout,
		WriteTimeout:      adminWriteTimeout,
		IdleTimeout:       adminIdleTimeout,
		MaxHeaderBytes:    adminMaxHeaderBytes,
		ConnState:         trackConnState,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			srv.Close()
		}
	}()
	err := srv.Serve(ll)
	<-stopped
	if !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serving metrics: %w", err)
	}
	return nil
}
