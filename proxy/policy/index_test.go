package policy

import (
	"math/rand/v2"
	"testing"

	"metaguard.dev/metaguard/identity"
)

// TestIndexNeverChangesADecision compares every decision with one made
// over all rules, for many pods against policies that use every kind of
// anchor: matchLabels, In expressions, namespace labels, service accounts
// and none.
func TestIndexNeverChangesADecision(t *testing.T) {
	doc := `
apiVersion: metaguard.dev/v1alpha1
kind: Policy
endpoints: [{name: aws, address: "169.254.169.254:80", flavor: aws}]
rules:
  - {name: everyone, allow: [{paths: ["/latest/meta-data/instance-id"]}]}
  - {name: by-label, podSelector: {matchLabels: {app: a, tier: web}}, allow: [{paths: ["/latest/meta-data/a/**"]}]}
  - {name: by-in, podSelector: {matchExpressions: [{key: app, operator: In, values: [b, c, b]}]}, allow: [{paths: ["/latest/meta-data/b/**"]}]}
  - {name: by-notin, podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [a]}]}, allow: [{paths: ["/latest/meta-data/n/**"]}]}
  - {name: by-ns, namespaceSelector: {matchLabels: {team: x}}, allow: [{paths: ["/latest/meta-data/ns/**"]}], credentials: allow}
  - {name: by-sa, serviceAccounts: [n/robot, m/other], allow: [{paths: ["/latest/meta-data/iam/**"]}], credentials: allow}
  - {name: by-sa-and-label, serviceAccounts: [n/robot], podSelector: {matchLabels: {app: c}}, allow: [{paths: ["/latest/meta-data/c/**"]}]}
  - {name: by-exists, podSelector: {matchExpressions: [{key: tier, operator: Exists}]}, allow: [{paths: ["/latest/meta-data/", "/latest/meta-data/t/**"]}]}
`
	p := mustParse(t, doc)
	all := *p
	all.index = ruleIndex{}
	for i := range p.rules {
		all.index.always = append(all.index.always, int32(i))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	pick := func(opts ...string) string { return opts[rng.IntN(len(opts))] }
	paths := []string{"/latest/meta-data/instance-id", "/latest/meta-data/a/x", "/latest/meta-data/b/x", "/latest/meta-data/n/x",
		"/latest/meta-data/ns/x", "/latest/meta-data/iam/info", "/latest/meta-data/c/x", "/latest/meta-data/", "/latest/meta-data/t/x"}
	for i := 0; i < 5000; i++ {
		labels := map[string]string{}
		if v := pick("", "a", "b", "c", "d"); v != "" {
			labels["app"] = v
		}
		if v := pick("", "web", "db"); v != "" {
			labels["tier"] = v
		}
		ns := map[string]string{}
		if v := pick("", "x", "y"); v != "" {
			ns["team"] = v
		}
		id := identity.Identity{Namespace: pick("n", "m"), Name: "p", ServiceAccount: pick("default", "robot", "other"), Labels: labels, NamespaceLabels: ns}
		req := Request{Endpoint: p.Endpoints()[0], Method: "GET", Path: pick(paths...)}
		got, want := p.Decide(id, req), all.Decide(id, req)
		if got != want {
			t.Fatalf("pod %v ns %v sa %s %s: indexed %+v, exhaustive %+v", labels, ns, id.ServiceAccount, req.Path, got, want)
		}
	}
}
