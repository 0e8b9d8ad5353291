package suggest

import (
	"bytes"
	"fmt"
	"testing"

	"go.yaml.in/yaml/v3"

	"metaguard.dev/metaguard/proxy/audit"
	"metaguard.dev/metaguard/proxy/policy"
)

type grouping struct {
	opts    Options
	groupOf func(pod) string // the test's own statement of the grouping
}

var groupings = []grouping{
	{labelBy("app"), func(p pod) string {
		if v, ok := p.labels["app"]; ok {
			return p.namespace + "/app=" + v
		}
		return p.namespace + "/sa=" + p.sa
	}},
	{Options{GroupBy: GroupBy{Kind: ByServiceAccount}}, func(p pod) string { return p.namespace + "/sa=" + p.sa }},
	{Options{GroupBy: GroupBy{Kind: ByNamespace}}, func(p pod) string { return p.namespace }},
}

// TestSuggestedPolicyReplaysTheLog is the promise of the command: replayed
// against the log it was made from, the suggested policy forwards every
// request that was forwarded and served (allow, strip, audit-deny; 2xx, or
// 304 on GCP), refuses what was only forwarded and never served unless
// its group was served the path too, and opens nothing in the credential
// class to a group beyond the credential paths the policy in force
// granted it.
func TestSuggestedPolicyReplaysTheLog(t *testing.T) {
	for _, sc := range scenarios {
		for _, g := range groupings {
			for _, th := range []int{0, 2, DefaultCollapseThreshold} {
				opts := g.opts
				opts.CollapseThreshold = th
				name := fmt.Sprintf("%s grouped by %s collapsing at %d allows every served request and no other credential", sc.name, opts.GroupBy, th)
				t.Run(name, func(t *testing.T) {
					in := mustParse(t, sc.config)
					log := logOf(t, in, sc.calls)
					full := append(append([]byte{}, log...), deniedLines(t, in.Endpoints()[0].Name)...)
					_, sug, out := suggestFrom(t, sc.config, opts, full)
					replay(t, sc, g, log, sug, out)
				})
			}
		}
	}
}

func replay(t *testing.T, sc scenario, g grouping, log []byte, sug Suggestion, out *policy.Policy) {
	t.Helper()
	podByName := map[string]pod{}
	for _, c := range sc.calls {
		podByName[c.pod.name] = c.pod
	}
	recs, err := audit.ReadAll(bytes.NewReader(log))
	if err != nil {
		t.Fatal(err)
	}
	used := map[string]map[[2]string]bool{}
	credRules := map[string]bool{} // rules that decided a used credential request
	var unserved []audit.Record
	for _, r := range recs {
		ep, _ := out.EndpointByName(r.Endpoint)
		if !r.Decision.Forwarded() {
			continue
		}
		if !wasServed(ep, r.Status) {
			unserved = append(unserved, r)
			continue
		}
		p := podByName[r.Pod]
		x := out.Explain(p.identity(), policy.Request{Endpoint: ep, Method: r.Method, Path: r.Path, Query: query(r.QueryKeys)})
		if x.Decision.Action == policy.Deny {
			t.Errorf("%s %s %s on %s was %s in the log but the suggestion denies it: %s\n%s", p.name, r.Method, r.Path, r.Endpoint, r.Decision, x.Why, sug.YAML)
		}
		if x.Credential {
			credRules[x.Decision.Rule] = true
		}
		k := g.groupOf(p)
		if used[k] == nil {
			used[k] = map[[2]string]bool{}
		}
		used[k][[2]string{r.Endpoint, r.Path}] = true
	}
	for _, r := range unserved {
		p := podByName[r.Pod]
		ep, _ := out.EndpointByName(r.Endpoint)
		if used[g.groupOf(p)][[2]string{r.Endpoint, r.Path}] {
			continue
		}
		if d := out.Decide(p.identity(), policy.Request{Endpoint: ep, Method: r.Method, Path: r.Path, Query: query(r.QueryKeys)}); d.Action != policy.Deny {
			t.Errorf("%s %s %s on %s was answered %d, never served, but the suggestion allows it\n%s", p.name, r.Method, r.Path, r.Endpoint, r.Status, sug.YAML)
		}
	}

	for _, p := range podByName {
		for _, probe := range sc.probes {
			ep, _ := out.EndpointByName(probe[0])
			d := out.Decide(p.identity(), policy.Request{Endpoint: ep, Method: "GET", Path: probe[1]})
			if want := used[g.groupOf(p)][probe]; (d.Action == policy.Allow) != want || d.Action == policy.Strip {
				t.Errorf("%s GET %s on %s: %s (%s), want allowed=%v\n%s", p.name, probe[1], probe[0], d.Label(), d.Reason, want, sug.YAML)
			}
		}
		for _, leak := range []string{"/leak/one", "/leak/two", "/leak/three", "/leak/four", "/leak/five", "/leak/six"} {
			ep := out.Endpoints()[0]
			if d := out.Decide(p.identity(), policy.Request{Endpoint: ep, Method: "GET", Path: leak}); d.Action != policy.Deny {
				t.Errorf("%s GET %s: %s; a refused, unserved or proxy-decided request became a rule", p.name, leak, d.Label())
			}
		}
	}

	var doc struct {
		Rules []struct {
			Name        string `yaml:"name"`
			Credentials string `yaml:"credentials"`
		} `yaml:"rules"`
	}
	if err := yaml.Unmarshal(sug.YAML, &doc); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range doc.Rules {
		if r.Credentials == "allow" {
			n++
			if !credRules[r.Name] {
				t.Errorf("rule %s says credentials: allow but no credential request of the log needs it\n%s", r.Name, sug.YAML)
			}
		}
	}
	if n != sug.CredentialRules || len(doc.Rules) != sug.Rules {
		t.Errorf("Suggestion counts %d rules, %d with credentials; the YAML has %d, %d", sug.Rules, sug.CredentialRules, len(doc.Rules), n)
	}
}
