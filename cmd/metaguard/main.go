// Command metaguard gates pod access to the cloud instance metadata
// service. This package is wiring only: flag parsing, signals and the
// subcommands; the work is done in proxy, redirect and identity.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Exit codes of docs/design.md.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// usageError is the caller's misuse of flags or arguments; it exits 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

const usage = `metaguard gates pod access to the cloud instance metadata service.

Usage:
  metaguard run [flags]          the per-node daemon
  metaguard validate --config F  check a policy file
  metaguard explain [flags] METHOD PATH
                                 show the decision for one request, and why
  metaguard suggest --audit-log F [flags]
                                 print a policy allowing what the audit log shows pods use
  metaguard cleanup              remove every rule and chain metaguard owns
  metaguard version

Run "metaguard COMMAND -h" for a command's flags.
`

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	var err error
	switch cmd, rest := args[0], args[1:]; cmd {
	case "run":
		err = runDaemon(ctx, rest, stderr)
	case "validate":
		err = runValidate(rest, stdout, stderr)
	case "explain":
		err = runExplain(ctx, rest, stdout, stderr)
	case "suggest":
		err = runSuggest(ctx, rest, stdout, stderr)
	case "cleanup":
		err = runCleanup(ctx, rest, stdout, stderr)
	case "iptables-backend":
		err = runIPTablesBackend(rest, stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintf(stdout, "metaguard %s\n", version)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "metaguard: unknown command %q\n\n%s", cmd, usage)
		return exitUsage
	}
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.As(err, new(*usageError)):
		fmt.Fprintf(stderr, "metaguard: %v\n", err)
		return exitUsage
	default:
		fmt.Fprintf(stderr, "metaguard: %v\n", err)
		return exitError
	}
}

// parseFlags parses a subcommand's flags; a parse error is a usage error.
func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer) error {
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &usageError{msg: err.Error()}
	}
	return nil
}

func usageErr(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}
