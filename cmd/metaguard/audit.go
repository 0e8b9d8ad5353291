package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"metaguard.dev/metaguard/proxy/policy"
)

// auditWriter is the audit log destination. A file is reopened on SIGHUP
// so logrotate can move it away without copytruncate.
type auditWriter struct {
	path string
	mu   sync.Mutex
	f    *os.File
}

func openAudit(path string) (*auditWriter, error) {
	if path == "-" || path == "" {
		return &auditWriter{f: os.Stdout}, nil
	}
	a := &auditWriter{path: path}
	if err := a.reopen(); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *auditWriter) reopen() error {
	f, err := os.OpenFile(a.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("opening audit log: %w", err)
	}
	a.mu.Lock()
	old := a.f
	a.f = f
	a.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

func (a *auditWriter) Write(p []byte) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.f.Write(p)
}

func (a *auditWriter) Close() error {
	if a.path == "" {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.f.Close()
}

// reopenOnHUP reopens the audit file and reloads the policy on SIGHUP,
// the signal operators and logrotate send to daemons.
func (a *auditWriter) reopenOnHUP(ctx context.Context, store *policy.Store, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			if a.path != "" {
				if err := a.reopen(); err != nil {
					log.Error("reopening audit log", "error", err)
				}
			}
			_ = store.Reload()
		}
	}
}

func promhttpHandler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
}
