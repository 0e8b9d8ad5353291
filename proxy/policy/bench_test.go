package policy

import (
	"fmt"
	"strings"
	"testing"

	"metaguard.dev/metaguard/identity"
)

// policyWithRules builds a policy of n rules in the shape clusters write
// them: one per workload, selected by app label (some by namespace or
// expressions), each with a few path patterns.
func policyWithRules(tb testing.TB, n int) *Policy {
	var b strings.Builder
	b.WriteString("apiVersion: metaguard.dev/v1alpha1\nkind: Policy\nendpoints: [{name: aws, address: \"169.254.169.254:80\", flavor: aws}]\nrules:\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "  - name: r%d\n", i)
		switch i % 4 {
		case 0, 1:
			fmt.Fprintf(&b, "    podSelector: {matchLabels: {app: svc-%d}}\n", i)
		case 2:
			fmt.Fprintf(&b, "    podSelector: {matchLabels: {app: svc-%d, tier: web}}\n    namespaceSelector: {matchLabels: {team: t%d}}\n", i, i)
		case 3:
			fmt.Fprintf(&b, "    podSelector: {matchExpressions: [{key: app, operator: In, values: [svc-%d, svc-x%d]}]}\n", i, i)
		}
		fmt.Fprintf(&b, "    allow:\n      - paths: [\"/latest/meta-data/placement/**\", \"/latest/meta-data/tags/instance/svc-%d\", \"/latest/meta-data/instance-id\"]\n", i)
	}
	return mustParse(tb, b.String())
}

func BenchmarkDecide(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		p := policyWithRules(b, n)
		ep := p.Endpoints()[0]
		target := n / 2
		id := identity.Identity{Namespace: "ns", Name: "p", ServiceAccount: "default",
			Labels:          map[string]string{"app": fmt.Sprintf("svc-%d", target), "tier": "web", "pod-template-hash": "abc123", "version": "v1"},
			NamespaceLabels: map[string]string{"kubernetes.io/metadata.name": "ns", "team": fmt.Sprintf("t%d", target)},
		}
		for _, path := range []string{"/latest/meta-data/placement/region", "/latest/meta-data/iam/security-credentials/role", "/latest/meta-data/"} {
			req := Request{Endpoint: ep, Method: "GET", Path: path}
			b.Run(fmt.Sprintf("rules=%d/%s", n, strings.ReplaceAll(path, "/", "_")), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					p.Decide(id, req)
				}
			})
		}
	}
}
