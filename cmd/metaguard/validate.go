package main

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"metaguard.dev/metaguard/proxy/policy"
)

func runValidate(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	config := fs.String("config", "/etc/metaguard/policy.yaml", "policy file to check")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageErr("validate takes no arguments, got %q", fs.Args())
	}
	p, err := policy.Load(*config)
	if err != nil {
		var ve *policy.ValidationError
		if errors.As(err, &ve) {
			// One problem per line, each with file:line, like a compiler.
			return fmt.Errorf("invalid policy:\n%w", err)
		}
		return err
	}
	fmt.Fprintf(stdout, "%s: valid (mode %s, defaultAction %s, %d endpoints, %d rules)\n",
		*config, p.Mode, p.DefaultAction, len(p.Endpoints()), len(p.RuleNames()))
	return nil
}
