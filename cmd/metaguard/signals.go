package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"metaguard.dev/metaguard/proxy/audit"
	"metaguard.dev/metaguard/proxy/policy"
)

// onHangup reopens the audit file and reloads the policy on SIGHUP, the
// signal operators and logrotate send to daemons, until ctx is done.
func onHangup(ctx context.Context, auditFile *audit.File, store *policy.Store, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			if err := auditFile.Reopen(); err != nil {
				log.Error("reopening audit log", "error", err)
			}
			_ = store.Reload() // logged and counted by Reload
		}
	}
}

// oneLine keeps a multi-line error (a policy's problems) readable in a
// one-line readiness answer.
func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", "; ") }
