package main

import (
	"flag"
	"fmt"
	"io"

	"metaguard.dev/metaguard/redirect"
)

// runIPTablesBackend prints the iptables back end metaguard would use,
// nft or legacy, decided by the very code the daemon runs. The image's
// iptables wrapper asks it when the daemon has not recorded its choice
// yet; it is not in the usage text because nothing else needs it.
func runIPTablesBackend(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("iptables-backend", flag.ContinueOnError)
	mode := fs.String("iptables-mode", redirect.ModeAuto, "auto, nft or legacy, as for run")
	verbose := fs.Bool("v", false, "also say why, on stderr")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageErr("iptables-backend takes no arguments, got %q", fs.Args())
	}
	b, why, err := redirect.ChooseBackend(*mode)
	if err != nil {
		return err
	}
	if *verbose {
		fmt.Fprintf(stderr, "metaguard: %s: %s\n", b, why)
	}
	fmt.Fprintln(stdout, b)
	return nil
}
