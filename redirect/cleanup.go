package redirect

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
)

// CleanupAll removes metaguard's chains and jumps from both address families
// and from every iptables back end that has them, and its routing rules,
// and nothing else. It is
// for `metaguard cleanup`, which must work without knowing the flags the
// daemon ran with, or which back end it chose. It is idempotent: running it
// on a clean node changes nothing and succeeds.
func CleanupAll(ctx context.Context, logger *slog.Logger) error {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return cleanupAll(ctx, logger, hostSystem())
}

func cleanupAll(ctx context.Context, log *slog.Logger, sys system) error {
	var errs []error
	usable := false
	for _, b := range backends {
		for _, f := range families {
			run, err := sys.newRunner(f, b)
			if err != nil {
				log.Debug("iptables binary not usable, skipping", "binary", binaryName(f, b), "err", err)
				continue
			}
			usable = true
			tables := []string{tableNAT, tableFilter}
			if b == backendLegacy {
				// Listing a legacy table creates it: only look where legacy
				// tables already exist.
				present, err := sys.legacyTables(f)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				tables = slices.DeleteFunc(tables, func(t string) bool { return !slices.Contains(present, t) })
			}
			changes, err := removeOwned(ctx, run, hooksIn(tables))
			if len(changes) > 0 {
				log.Info("redirect rules removed", "family", f.String(), "backend", string(b), "changes", changes)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("removing %s rules (%s): %w", f, b, err))
			}
		}
	}
	if !usable {
		errs = append(errs, fmt.Errorf("none of %s, %s, %s, %s found in PATH", binaryName(ipv4, backendNFT), binaryName(ipv6, backendNFT), binaryName(ipv4, backendLegacy), binaryName(ipv6, backendLegacy)))
	}
	if sys.rules != nil {
		changes, err := removeRouteRules(ctx, sys.rules)
		if len(changes) > 0 {
			log.Info("routing rules removed", "changes", changes)
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
