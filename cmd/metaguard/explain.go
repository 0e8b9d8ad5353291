package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"metaguard.dev/metaguard/identity"
	"metaguard.dev/metaguard/identity/podindex"
	"metaguard.dev/metaguard/proxy"
	"metaguard.dev/metaguard/proxy/policy"
)

func runExplain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("explain", flag.ContinueOnError)
	config := fs.String("config", "/etc/metaguard/policy.yaml", "policy file")
	namespace := fs.String("namespace", "default", "the pod's namespace")
	podLabels := fs.String("labels", "", "the pod's labels, k=v,k=v")
	nsLabels := fs.String("namespace-labels", "", "the namespace's labels, k=v,k=v (kubernetes.io/metadata.name is added)")
	sa := fs.String("service-account", "default", "the pod's service account")
	endpoint := fs.String("endpoint", "", "endpoint name (default: the policy's first)")
	podRef := fs.String("pod", "", "NAMESPACE/NAME: read the live pod and its namespace instead of the flags above (needs --kubeconfig or in-cluster)")
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig for --pod (default in-cluster)")
	expect := fs.String("expect", "", "allow, strip or deny: exit 1 unless the decision is that (deny also covers audit-deny and a refusal before any rule)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: metaguard explain [flags] METHOD PATH[?QUERY]")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		return usageErr("explain needs METHOD and PATH, got %q", fs.Args())
	}
	method, target := strings.ToUpper(fs.Arg(0)), fs.Arg(1)
	switch *expect {
	case "", "allow", "strip", "deny":
	default:
		return usageErr("--expect must be allow, strip or deny, got %q", *expect)
	}

	pol, err := policy.Load(*config)
	if err != nil {
		return err
	}
	ep := pol.Endpoints()[0]
	if *endpoint != "" {
		var ok bool
		if ep, ok = pol.EndpointByName(*endpoint); !ok {
			return usageErr("the policy has no endpoint %q", *endpoint)
		}
	}

	var id identity.Identity
	if *podRef != "" {
		if id, err = livePod(ctx, *kubeconfig, *podRef); err != nil {
			return err
		}
	} else {
		pl, err := parseLabels(*podLabels)
		if err != nil {
			return usageErr("--labels: %v", err)
		}
		nl, err := parseLabels(*nsLabels)
		if err != nil {
			return usageErr("--namespace-labels: %v", err)
		}
		// The API server sets this label on every namespace; selectors on
		// it are the usual way to pick a namespace by name.
		nl["kubernetes.io/metadata.name"] = *namespace
		id = identity.Identity{Namespace: *namespace, Name: "(explain)", ServiceAccount: *sa, Labels: pl, NamespaceLabels: nl}
	}

	// The same canonicalisation the proxy applies: a request it would
	// refuse with 400 never reaches the policy.
	r := &http.Request{Method: method, RequestURI: target, ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{}}
	canon, rerr := proxy.Canonicalize(r, ep)
	w := &lines{w: stdout}
	w.f("endpoint:  %s (%s, %s)", ep.Name, ep.Addr, ep.Flavor)
	w.f("pod:       %s/%s service-account=%s labels=%s namespace-labels=%s", id.Namespace, id.Name, id.ServiceAccount, formatLabels(id.Labels), formatLabels(id.NamespaceLabels))
	if rerr != nil {
		w.f("request:   %s %s", method, target)
		w.f("decision:  refused with %d before any rule: %s", rerr.Status, rerr.Reason)
		if w.err != nil {
			return w.err
		}
		return checkExpect(*expect, "deny", fmt.Sprintf("refused with %d", rerr.Status))
	}
	x := pol.Explain(id, policy.Request{Endpoint: ep, Method: canon.Method, Path: canon.Path, Query: canon.Query})
	rule := x.Decision.Rule
	if rule == "" {
		rule = "(no rule)"
	}
	w.f("request:   %s %s", canon.Method, canon.Path+query(canon.RawQuery))
	w.f("decision:  %s", x.Decision.Label())
	w.f("rule:      %s", rule)
	w.f("reason:    %s", x.Decision.Reason)
	w.f("why:       %s", x.Why)
	w.f("selecting: %s", list(x.Selecting))
	w.f("allowing:  %s", list(x.Allowing))
	w.f("credential path: %v; response may list credentials: %v", x.Credential, x.Listing)
	if w.err != nil {
		return w.err
	}
	got := x.Decision.Label().String()
	return checkExpect(*expect, expectClass(got), got+" by "+rule)
}

// expectClass is the --expect value a decision satisfies. A policy's intent
// to deny holds in audit mode too: audit-deny is a denial whose enforcement
// is deferred, and the credential class is refused outright.
func expectClass(decision string) string {
	if decision == "audit-deny" {
		return "deny"
	}
	return decision
}

// checkExpect fails explain when --expect names another decision, so that
// a policy repository can test its intent in CI.
func checkExpect(want, got, detail string) error {
	if want == "" || want == got {
		return nil
	}
	return fmt.Errorf("expected %s, got %s", want, detail)
}

func livePod(ctx context.Context, kubeconfig, ref string) (identity.Identity, error) {
	ns, name, ok := strings.Cut(ref, "/")
	if !ok || ns == "" || name == "" {
		return identity.Identity{}, usageErr("--pod must be NAMESPACE/NAME, got %q", ref)
	}
	client, err := kubeClient(kubeconfig)
	if err != nil {
		return identity.Identity{}, err
	}
	pod, err := client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return identity.Identity{}, fmt.Errorf("reading pod %s: %w", ref, err)
	}
	nsObj, err := client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if err != nil {
		return identity.Identity{}, fmt.Errorf("reading namespace %s: %w", ns, err)
	}
	return podindex.IdentityOf(pod, nsObj.Labels), nil
}

func parseLabels(s string) (map[string]string, error) {
	m := map[string]string{}
	if s == "" {
		return m, nil
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%q is not key=value", kv)
		}
		m[k] = v
	}
	return m, nil
}

func formatLabels(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for i, k := range keys {
		keys[i] = k + "=" + m[k]
	}
	return "{" + strings.Join(keys, ",") + "}"
}

func list(s []string) string {
	if len(s) == 0 {
		return "(none)"
	}
	return strings.Join(s, ", ")
}

func query(raw string) string {
	if raw == "" {
		return ""
	}
	return "?" + raw
}

// lines writes formatted lines and keeps the first error.
type lines struct {
	w   io.Writer
	err error
}

func (l *lines) f(format string, args ...any) {
	if l.err == nil {
		_, l.err = fmt.Fprintf(l.w, format+"\n", args...)
	}
}
