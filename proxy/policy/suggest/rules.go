package suggest

import (
	"fmt"
	"hash/fnv"
	"sort"
	"strings"

	"metaguard.dev/metaguard/identity"
	"metaguard.dev/metaguard/proxy/policy"
)

// ruleOut is one suggested rule before it is written as YAML.
type ruleOut struct {
	group       *group
	endpoints   []string // endpoints it is limited to; nil when the policy has one
	credentials bool
	entries     []entry
	notes       []string // what the credential rule reads, for the reviewer
	// unpinned are credential paths whose identity was chosen by query
	// values the log does not hold: the reviewer must pin them.
	unpinned []string
	name     string
}

// entry is one allow entry: a method set and the patterns it allows.
type entry struct {
	methods []string // nil: the default, GET and HEAD
	paths   []covered
}

// rules turns what each group used into rules, in a stable order: groups
// sorted by namespace, kind and value; for each, its rule without
// credentials first, then the one that says credentials: allow.
func (s *Suggester) rules() []*ruleOut {
	keys := make([]groupKey, 0, len(s.groups))
	for k := range s.groups {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if a.namespace != b.namespace {
			return a.namespace < b.namespace
		}
		if a.kind != b.kind {
			return a.kind < b.kind
		}
		return a.value < b.value
	})
	var out []*ruleOut
	for _, k := range keys {
		g := s.groups[k]
		var plain, creds []*ruleOut
		for _, ep := range s.pol.Endpoints() {
			paths := g.endpoints[ep.Name]
			if paths == nil {
				continue
			}
			p, c := s.endpointRules(g, ep, paths)
			if p != nil {
				plain = append(plain, p)
			}
			if c != nil {
				creds = append(creds, c)
			}
		}
		plain, creds = merge(plain), merge(creds)
		out = append(out, plain...)
		out = append(out, creds...)
	}
	s.name(out)
	return out
}

// endpointRules builds a group's rules for one endpoint: the paths outside
// the credential class, collapsed where that is safe, and the credential
// paths, always literal, in a rule of their own. Keeping them apart means
// credentials: allow opens only the credential paths the group read:
// listings the group reads (meta-data/, recursive dumps) are still
// stripped of every other credential entry.
func (s *Suggester) endpointRules(g *group, ep *policy.Endpoint, paths map[string]*pathUse) (plain, creds *ruleOut) {
	var reads, puts trie
	var credReads, credPuts []covered
	var credPaths []string
	for path, u := range paths {
		if u.credential {
			credPaths = append(credPaths, path)
			if u.methods&(methodGet|methodHead) != 0 {
				credReads = append(credReads, covered{path, 1})
			}
			if u.methods&methodPut != 0 {
				credPuts = append(credPuts, covered{path, 1})
			}
			continue
		}
		if u.methods&(methodGet|methodHead) != 0 {
			reads.insert(path)
		}
		if u.methods&methodPut != 0 {
			puts.insert(path)
		}
	}
	var eps []string
	if len(s.pol.Endpoints()) > 1 {
		eps = []string{ep.Name}
	}
	mayWiden := func(dir string) bool { return !ep.IsCredential(dir) && !listsCredentials(s.pol, ep, dir) }
	th := s.opts.CollapseThreshold
	if e := entries(collapse(&reads, th, mayWiden), collapse(&puts, th, mayWiden)); len(e) > 0 {
		plain = &ruleOut{group: g, endpoints: eps, entries: e}
	}
	if len(credPaths) == 0 {
		return plain, nil
	}
	sortCovered(credReads)
	sortCovered(credPuts)
	sort.Strings(credPaths)
	creds = &ruleOut{group: g, endpoints: eps, credentials: true, entries: entries(credReads, credPuts)}
	for _, path := range credPaths {
		u := paths[path]
		line := "  " + methodNames(u.methods) + " " + path
		if len(u.queryKeys) > 0 {
			line += " (query keys: " + strings.Join(sortedKeys(u.queryKeys), ", ") + ")"
		}
		creds.notes = append(creds.notes, line)
		var keys []string
		for _, k := range identityQueryKeys {
			if u.queryKeys[k] {
				keys = append(keys, k)
			}
		}
		if len(keys) == 0 {
			continue
		}
		creds.unpinned = append(creds.unpinned, fmt.Sprintf("%s chooses an identity by %s", path, strings.Join(keys, ", ")))
		creds.notes = append(creds.notes,
			"    It chooses a managed identity by "+strings.Join(keys, ", ")+", and the audit log holds no",
			"    query values: pin the identity this workload should have with a query: entry.")
		for _, p := range s.pinsFor(ep, path) {
			creds.notes = append(creds.notes, "    The policy in force pins it in "+p)
		}
	}
	return plain, creds
}

// listsCredentials reports whether some path below dir may be a credential
// path of ep. Explain's Listing is exactly that test (it is what makes the
// proxy strip a listing of dir), so a pattern is only ever widened where
// the proxy itself agrees that nothing below is a credential.
func listsCredentials(pol *policy.Policy, ep *policy.Endpoint, dir string) bool {
	return pol.Explain(identity.Identity{}, policy.Request{Endpoint: ep, Method: "GET", Path: dir}).Listing
}

// entries groups patterns by the methods they were used with. GET and HEAD
// are one class: HEAD shows no more than GET, and together they are the
// policy's default, so such entries need no methods line.
func entries(reads, puts []covered) []entry {
	inPut := map[string]bool{}
	for _, c := range puts {
		inPut[c.pattern] = true
	}
	inRead := map[string]bool{}
	var readOnly, both, putOnly []covered
	for _, c := range reads {
		inRead[c.pattern] = true
		if inPut[c.pattern] {
			both = append(both, c)
		} else {
			readOnly = append(readOnly, c)
		}
	}
	for _, c := range puts {
		if !inRead[c.pattern] {
			putOnly = append(putOnly, c)
		}
	}
	var out []entry
	if len(readOnly) > 0 {
		out = append(out, entry{paths: readOnly})
	}
	if len(both) > 0 {
		out = append(out, entry{methods: []string{"GET", "HEAD", "PUT"}, paths: both})
	}
	if len(putOnly) > 0 {
		out = append(out, entry{methods: []string{"PUT"}, paths: putOnly})
	}
	return out
}

// merge folds rules of one group that allow the same on several endpoints
// (aws and aws-v6, say) into one rule listing those endpoints.
func merge(rules []*ruleOut) []*ruleOut {
	var out []*ruleOut
	seen := map[string]*ruleOut{}
	for _, r := range rules {
		fp := fmt.Sprint(r.entries, r.notes, r.unpinned)
		if prev := seen[fp]; prev != nil && r.endpoints != nil {
			prev.endpoints = append(prev.endpoints, r.endpoints...)
			continue
		}
		seen[fp] = r
		out = append(out, r)
	}
	return out
}

// name gives every rule a unique valid name derived from its group, e.g.
// shop-web, shop-web-credentials, shop-sa-builder-aws-v6.
func (s *Suggester) name(rules []*ruleOut) {
	perGroup := map[*group][2]int{}
	for _, r := range rules {
		n := perGroup[r.group]
		n[b2i(r.credentials)]++
		perGroup[r.group] = n
	}
	ids := make([]string, len(rules))
	for i, r := range rules {
		base := s.baseName(r.group.key)
		if perGroup[r.group][b2i(r.credentials)] > 1 {
			base += "-" + strings.Join(r.endpoints, "-")
		}
		if r.credentials {
			base += "-credentials"
		}
		ids[i] = fmt.Sprint(r.group.key, r.endpoints, r.credentials)
		r.name = ruleName(base, ids[i])
	}
	count := map[string]int{}
	for _, r := range rules {
		count[r.name]++
	}
	for i, r := range rules {
		if count[r.name] > 1 {
			// Two groups that differ only in characters a rule name
			// cannot hold (App=Web and app=web): a hash of the group
			// tells them apart.
			r.name = withHash(r.name, ids[i])
		}
	}
}

func (s *Suggester) baseName(k groupKey) string {
	switch {
	case k.kind == ByNamespace:
		return k.namespace
	case k.kind == ByServiceAccount:
		return k.namespace + "-sa-" + k.value
	case k.value == "":
		return k.namespace + "-" + s.opts.GroupBy.Label + "-empty"
	}
	return k.namespace + "-" + k.value
}

// ruleName makes base a valid rule name (lower-case DNS style, at most 63
// characters); id makes a shortened name unique.
func ruleName(base, id string) string {
	b := []byte(strings.ToLower(base))
	for i, c := range b {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' && c != '.' {
			b[i] = '-'
		}
	}
	name := strings.Trim(string(b), "-.")
	if name == "" {
		name = "group"
	}
	if len(name) > 63 {
		return withHash(name, id)
	}
	return name
}

func withHash(name, id string) string {
	h := fnv.New32a()
	h.Write([]byte(id))
	if len(name) > 54 {
		name = strings.TrimRight(name[:54], "-.")
	}
	return fmt.Sprintf("%s-%08x", name, h.Sum32())
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func methodNames(m methodSet) string {
	var names []string
	for _, name := range []string{"GET", "HEAD", "PUT"} {
		if m&methodBits[name] != 0 {
			names = append(names, name)
		}
	}
	return strings.Join(names, ",")
}

func sortedKeys(m map[string]bool) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func sortCovered(c []covered) {
	sort.Slice(c, func(i, j int) bool { return c[i].pattern < c[j].pattern })
}
