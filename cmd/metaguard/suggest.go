package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"metaguard.dev/metaguard/proxy/policy"
	"metaguard.dev/metaguard/proxy/policy/suggest"
)

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

func runSuggest(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("suggest", flag.ContinueOnError)
	var logs stringList
	fs.Var(&logs, "audit-log", "audit log to learn from: JSON lines, plain or gzip, - for stdin; repeat it, or name more logs as arguments")
	config := fs.String("config", "/etc/metaguard/policy.yaml", "the policy in force; its endpoints, credentialPaths, rateLimit and mode are kept")
	groupBy := fs.String("group-by", "label=app", "which pods share a rule: label=KEY, serviceaccount or namespace")
	threshold := fs.Int("collapse-threshold", suggest.DefaultCollapseThreshold, "used siblings of a directory that become one * or ** pattern; 0 never collapses")
	mode := fs.String("mode", "", "mode of the suggested policy, enforce or audit (default: the mode of --config)")
	var grants stringList
	fs.Var(&grants, "grant-credentials", "a group (as suggest names it under review) whose reviewed credential requests are granted; repeat it for more groups")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: metaguard suggest --audit-log FILE [--audit-log FILE...] [flags] [FILE...]")
		fmt.Fprintln(fs.Output(), "Prints a policy that allows what each group of pods was seen to use; a summary goes to stderr.")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	logs = append(logs, fs.Args()...)
	if len(logs) == 0 {
		return usageErr("suggest needs at least one --audit-log (- reads stdin)")
	}
	gb, err := suggest.ParseGroupBy(*groupBy)
	if err != nil {
		return usageErr("--group-by: %v", err)
	}
	if *threshold < 0 {
		return usageErr("--collapse-threshold must be 0 (never collapse) or more, got %d", *threshold)
	}
	switch policy.Mode(*mode) {
	case "", policy.ModeAudit, policy.ModeEnforce:
	default:
		return usageErr("--mode must be enforce or audit, got %q", *mode)
	}

	data, err := os.ReadFile(*config)
	if err != nil {
		return fmt.Errorf("reading policy: %w", err)
	}
	s, err := suggest.New(*config, data, suggest.Options{GroupBy: gb, CollapseThreshold: *threshold, Mode: policy.Mode(*mode), GrantCredentials: grants})
	if err != nil {
		return err
	}
	for _, name := range logs {
		if err := readAuditLog(ctx, s, name); err != nil {
			return err
		}
	}
	sug, err := s.Policy()
	if err != nil {
		return err
	}
	if _, err := stdout.Write(sug.YAML); err != nil {
		return fmt.Errorf("writing the suggested policy: %w", err)
	}
	summarize(stderr, s.Stats(), sug, len(logs))
	return nil
}

func readAuditLog(ctx context.Context, s *suggest.Suggester, name string) error {
	if name == "-" {
		return s.ReadLog(ctx, "stdin", os.Stdin)
	}
	f, err := os.Open(name)
	if err != nil {
		return fmt.Errorf("opening audit log: %w", err)
	}
	defer f.Close()
	return s.ReadLog(ctx, name, f)
}

// summarize tells the operator what the suggestion is made of, what was
// left out and why, and what needs review, so a surprising policy can be
// traced to the log.
func summarize(out io.Writer, st suggest.Stats, sug suggest.Suggestion, logs int) {
	skipped := []string{}
	for _, c := range []struct {
		n    int64
		what string
	}{
		{st.Review, "for review (credential requests not granted)"},
		{st.NotServed, "not served"},
		{st.Denied, "denied (never suggested)"},
		{st.ByProxy, "decided by the proxy, not the policy"},
		{st.UnknownEndpoint, "of endpoints not in the policy"},
		{st.OverBound, "past the paths kept per group"},
		{st.Other, "of other logs"},
		{st.Malformed, "malformed"},
	} {
		if c.n > 0 {
			skipped = append(skipped, fmt.Sprintf("%d %s", c.n, c.what))
		}
	}
	line := fmt.Sprintf("metaguard suggest: read %s from %s: %d used", count(st.Lines, "line"), count(int64(logs), "audit log"), st.Used)
	if len(skipped) > 0 {
		line += "; skipped " + strings.Join(skipped, ", ")
	}
	fmt.Fprintln(out, line)
	if st.FirstMalformed != "" {
		fmt.Fprintf(out, "metaguard suggest: first malformed line: %s\n", st.FirstMalformed)
	}
	fmt.Fprintf(out, "metaguard suggest: %s, %s, %d with credentials: allow\n",
		count(int64(st.Groups), "pod group"), count(int64(sug.Rules), "rule"), sug.CredentialRules)
	for _, r := range sug.Review {
		if r.Granted {
			fmt.Fprintf(out, "metaguard suggest: granted: group %s (%s): %s on %s by %s, as --grant-credentials asked\n",
				r.Group, r.Who, count(r.Requests, "credential request"), count(int64(r.Paths), "path"), r.Pods)
			continue
		}
		fmt.Fprintf(out, "metaguard suggest: review: group %s (%s): %s on %s by %s not granted; listed at the end of the policy; --grant-credentials=%s grants them\n",
			r.Group, r.Who, count(r.Requests, "credential request"), count(int64(r.Paths), "path"), r.Pods, r.Group)
	}
	for _, warning := range sug.Warnings {
		fmt.Fprintf(out, "metaguard suggest: review: %s\n", warning)
	}
	if st.Used == 0 {
		fmt.Fprintln(out, "metaguard suggest: no served request of an identified pod was used: the suggested policy denies everything")
	}
}

func count(n int64, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
