package suggest

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"

	"metaguard.dev/metaguard/identity"
	"metaguard.dev/metaguard/proxy/policy"
)

// pinnedEntry is an allow entry of the policy in force that constrains a
// query key choosing an identity.
type pinnedEntry struct {
	rule      string
	endpoints []string
	paths     []string
	query     map[string][]string
}

// pinnedEntries reads the entries with identity pins from the policy in
// force: entries constraining one of keys (the endpoints' IdentityKeys,
// which pick a managed identity; the audit log never holds query values,
// so the suggestion cannot pin them and quotes these for the reviewer).
// Rules are not exported by package policy, so they are read from the
// document; Parse has already validated it.
func pinnedEntries(config []byte, keys []string) []pinnedEntry {
	var doc struct {
		Rules []struct {
			Name      string   `yaml:"name"`
			Endpoints []string `yaml:"endpoints"`
			Allow     []struct {
				Paths []string            `yaml:"paths"`
				Query map[string][]string `yaml:"query"`
			} `yaml:"allow"`
		} `yaml:"rules"`
	}
	if yaml.Unmarshal(config, &doc) != nil {
		return nil
	}
	var out []pinnedEntry
	for _, r := range doc.Rules {
		for _, a := range r.Allow {
			q := map[string][]string{}
			for _, k := range keys {
				if v, ok := a.Query[k]; ok {
					q[k] = v
				}
			}
			if len(q) > 0 {
				out = append(out, pinnedEntry{rule: r.Name, endpoints: r.Endpoints, paths: a.Paths, query: q})
			}
		}
	}
	return out
}

// pinsFor describes the identity pins the policy in force puts on path at
// ep, e.g. `rule billing-identity: query: {client_id: ["..."]}`. Whether
// an entry's patterns cover path is asked of package policy itself, through
// a one-rule policy, so the matching is the proxy's own.
func (s *Suggester) pinsFor(ep *policy.Endpoint, path string) []string {
	var out []string
	for _, e := range s.pins {
		if len(e.endpoints) > 0 && !containsString(e.endpoints, ep.Name) {
			continue
		}
		paths, _ := json.Marshal(e.paths)
		doc := fmt.Sprintf("apiVersion: %s\nkind: %s\nendpoints: [{name: e, address: %q, flavor: %s}]\nrules: [{name: r, allow: [{paths: %s}], credentials: allow}]\n",
			policy.APIVersion, policy.Kind, ep.Addr.String(), ep.Flavor, paths)
		one, err := policy.Parse("pin", []byte(doc))
		if err != nil {
			continue
		}
		d := one.Decide(identity.Identity{}, policy.Request{Endpoint: one.Endpoints()[0], Method: "GET", Path: path})
		if d.Action != policy.Allow {
			continue
		}
		keys := make([]string, 0, len(e.query))
		for k := range e.query {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var parts []string
		for _, k := range keys {
			vals, _ := json.Marshal(e.query[k])
			parts = append(parts, fmt.Sprintf("%s: %s", k, vals))
		}
		out = append(out, fmt.Sprintf("rule %s: query: {%s}", e.rule, strings.Join(parts, ", ")))
	}
	return out
}

func containsString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
