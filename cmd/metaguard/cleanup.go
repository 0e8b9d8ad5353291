package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"metaguard.dev/metaguard/redirect"
)

func runCleanup(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("cleanup", flag.ContinueOnError)
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageErr("cleanup takes no arguments, got %q", fs.Args())
	}
	log := slog.New(slog.NewJSONHandler(stderr, nil))
	if err := redirect.CleanupAll(ctx, log); err != nil {
		return fmt.Errorf("removing metaguard's rules: %w", err)
	}
	fmt.Fprintln(stdout, "metaguard: every rule and chain metaguard owns is removed")
	return nil
}
