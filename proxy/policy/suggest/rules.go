package suggest

import (
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
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
	// granted: the operator granted the group's reviewed credential
	// requests (Options.GrantCredentials), and they are in this rule.
	granted bool
	entries []entry
	notes   []string // what the credential rule reads, for the reviewer
	// unpinned are credential paths whose identity was chosen by query
	// values the log does not hold: the reviewer must pin them.
	unpinned []string
	name     string
}

// pods and requests sum up the rule's paths, for its comment.
func (r *ruleOut) pods() (podSet, int64) {
	var pods podSet
	var n int64
	for _, e := range r.entries {
		for _, c := range e.paths {
			pods = pods.union(c.pods)
			n += c.requests
		}
	}
	return pods, n
}

// entry is one allow entry: a method set and the patterns it allows.
type entry struct {
	methods []string // nil: the default, GET and HEAD
	paths   []covered
}

// rules turns what each group used into rules, in a stable order: groups
// sorted by namespace, kind and value; for each, its rule without
// credentials first, then the one that says credentials: allow.
func (s *Suggester) rules(names map[*group]string, grant map[string]bool) []*ruleOut {
	var out []*ruleOut
	for _, g := range s.sortedGroups() {
		var plain, creds []*ruleOut
		for _, ep := range s.pol.Endpoints() {
			p, c := s.endpointRules(g, ep, grant[names[g]])
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
	s.name(out, names)
	return out
}

func (s *Suggester) sortedGroups() []*group {
	out := make([]*group, 0, len(s.groups))
	for _, g := range s.groups {
		out = append(out, g)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].key, out[j].key
		if a.namespace != b.namespace {
			return a.namespace < b.namespace
		}
		if a.kind != b.kind {
			return a.kind < b.kind
		}
		return a.value < b.value
	})
	return out
}

// endpointRules builds a group's rules for one endpoint: the paths outside
// the credential class, collapsed where that is safe, and the credential
// paths, always literal, in a rule of their own. Keeping them apart means
// credentials: allow opens only the credential paths the group read:
// listings the group reads (meta-data/, recursive dumps) are still
// stripped of every other credential entry. The credential paths are those
// the policy in force granted and, when the operator grants the group its
// reviewed requests, those.
func (s *Suggester) endpointRules(g *group, ep *policy.Endpoint, granted bool) (plain, creds *ruleOut) {
	var reads, puts, dels trie
	credMethods := map[string]methodSet{}
	credPods := map[string]podSet{}
	credRequests := map[string]int64{}
	for path, u := range g.endpoints[ep.Name] {
		if u.credential {
			credMethods[path] |= u.methods
			credPods[path] = credPods[path].union(u.read.union(u.put).union(u.del))
			credRequests[path] += u.requests
			continue
		}
		if len(u.read) > 0 {
			reads.insert(path, u.read, u.requests)
		}
		if len(u.put) > 0 {
			puts.insert(path, u.put, u.requests)
		}
		if len(u.del) > 0 {
			dels.insert(path, u.del, u.requests)
		}
	}
	review := g.review[ep.Name]
	if granted {
		for path, u := range review {
			credMethods[path] |= u.methods
			credPods[path] = credPods[path].union(u.pods)
			credRequests[path] += u.requests
		}
	}
	var eps []string
	if len(s.pol.Endpoints()) > 1 {
		eps = []string{ep.Name}
	}
	// A generic endpoint's paths mean whatever its service makes of them:
	// nothing says a family of siblings is one kind of thing, so none is
	// ever widened.
	mayWiden := func(dir string) bool {
		return ep.Flavor != policy.FlavorGeneric && !ep.IsCredential(dir) && !listsCredentials(s.pol, ep, dir)
	}
	th := s.opts.CollapseThreshold
	if e := entries(collapse(&reads, th, mayWiden), collapse(&puts, th, mayWiden), collapse(&dels, th, mayWiden)); len(e) > 0 {
		plain = &ruleOut{group: g, endpoints: eps, entries: e}
	}
	if len(credMethods) == 0 {
		return plain, nil
	}
	credPaths := make([]string, 0, len(credMethods))
	var credReads, credPuts, credDels []covered
	for path, m := range credMethods {
		credPaths = append(credPaths, path)
		c := covered{pattern: path, paths: 1, pods: credPods[path], requests: credRequests[path]}
		if m&(methodGet|methodHead) != 0 {
			credReads = append(credReads, c)
		}
		if m&methodPut != 0 {
			credPuts = append(credPuts, c)
		}
		if m&methodDelete != 0 {
			credDels = append(credDels, c)
		}
	}
	sortCovered(credReads)
	sortCovered(credPuts)
	sortCovered(credDels)
	sort.Strings(credPaths)
	creds = &ruleOut{group: g, endpoints: eps, credentials: true, granted: granted && len(review) > 0, entries: entries(credReads, credPuts, credDels)}
	for _, path := range credPaths {
		keys := map[string]bool{}
		line := "  " + methodNames(credMethods[path]) + " " + path + " by " + g.pods.describe(credPods[path])
		if u := g.endpoints[ep.Name][path]; u != nil {
			for k := range u.queryKeys {
				keys[k] = true
			}
			line += ": the policy in force granted it"
		}
		if u := review[path]; granted && u != nil {
			for k := range u.queryKeys {
				keys[k] = true
			}
			line += ": " + u.summary() + "; granted by --grant-credentials"
		}
		if len(keys) > 0 {
			line += " (query keys: " + strings.Join(sortedKeys(keys), ", ") + ")"
		}
		creds.notes = append(creds.notes, commentSafe(line))
		var idKeys []string
		for _, k := range ep.IdentityKeys() {
			if keys[k] {
				idKeys = append(idKeys, k)
			}
		}
		if len(idKeys) == 0 {
			continue
		}
		creds.unpinned = append(creds.unpinned, fmt.Sprintf("%s chooses an identity by %s", path, strings.Join(idKeys, ", ")))
		creds.notes = append(creds.notes,
			"    It chooses a managed identity by "+strings.Join(idKeys, ", ")+", and the audit log holds no",
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

// entries makes one entry per set of methods the patterns were used with.
// GET and HEAD are one class: HEAD shows no more than GET, and together
// they are the policy's default, so such entries need no methods. The
// reads alone come first, then the sets with reads, then the writes alone;
// paths keep the order they are given in.
func entries(reads, puts, dels []covered) []entry {
	type use struct {
		c covered
		m methodSet
	}
	byPattern := map[string]*use{}
	var order []string
	add := func(cs []covered, m methodSet) {
		for _, c := range cs {
			u := byPattern[c.pattern]
			if u == nil {
				u = &use{c: c}
				byPattern[c.pattern] = u
				order = append(order, c.pattern)
			} else {
				u.c.pods = u.c.pods.union(c.pods)
				u.c.requests += c.requests
			}
			u.m |= m
		}
	}
	add(reads, methodsRead)
	add(puts, methodPut)
	add(dels, methodDelete)
	bySet := map[methodSet][]covered{}
	for _, p := range order {
		u := byPattern[p]
		bySet[u.m] = append(bySet[u.m], u.c)
	}
	sets := slices.Collect(maps.Keys(bySet))
	slices.SortFunc(sets, func(a, b methodSet) int {
		if ra, rb := a&methodsRead != 0, b&methodsRead != 0; ra != rb {
			if ra {
				return -1
			}
			return 1
		}
		return int(a) - int(b)
	})
	var out []entry
	for _, m := range sets {
		e := entry{paths: bySet[m]}
		if m != methodsRead {
			e.methods = methodList(m)
		}
		out = append(out, e)
	}
	return out
}

// merge folds rules of one group that allow the same on several endpoints
// (aws and aws-v6, say) into one rule listing those endpoints; the pods
// and counts behind each pattern are summed.
func merge(rules []*ruleOut) []*ruleOut {
	var out []*ruleOut
	seen := map[string]*ruleOut{}
	for _, r := range rules {
		fp := fingerprint(r)
		if prev := seen[fp]; prev != nil && r.endpoints != nil {
			prev.endpoints = append(prev.endpoints, r.endpoints...)
			for i, e := range r.entries {
				for j, c := range e.paths {
					p := &prev.entries[i].paths[j]
					p.pods = p.pods.union(c.pods)
					p.requests += c.requests
				}
			}
			continue
		}
		seen[fp] = r
		out = append(out, r)
	}
	return out
}

// fingerprint is what a rule allows and says. Plain rules say nothing of
// who used them; a credential rule's notes name its pods and counts, so two
// of those merge only when they say the same (the same pods on aws and
// aws-v6 with the same counts).
func fingerprint(r *ruleOut) string {
	var b strings.Builder
	for _, e := range r.entries {
		fmt.Fprint(&b, e.methods)
		for _, c := range e.paths {
			fmt.Fprintf(&b, " %s=%d", c.pattern, c.paths)
		}
		b.WriteByte(';')
	}
	fmt.Fprint(&b, r.granted, r.notes, r.unpinned)
	return b.String()
}

// groupNames gives every group a unique valid name derived from its key,
// e.g. shop-web, shop-sa-builder: its rules are named after it, and
// --grant-credentials takes it.
func (s *Suggester) groupNames() map[*group]string {
	var gs []*group
	var names, ids []string
	for _, g := range s.groups {
		gs = append(gs, g)
		names = append(names, ruleName(s.baseName(g.key), fmt.Sprint(g.key)))
		ids = append(ids, fmt.Sprint(g.key))
	}
	out := map[*group]string{}
	for i, n := range uniqueNames(names, ids) {
		out[gs[i]] = n
	}
	return out
}

// name gives every rule a unique valid name derived from its group's, e.g.
// shop-web, shop-web-credentials, shop-sa-builder-aws-v6.
func (s *Suggester) name(rules []*ruleOut, groups map[*group]string) {
	perGroup := map[*group][2]int{}
	for _, r := range rules {
		n := perGroup[r.group]
		n[b2i(r.credentials)]++
		perGroup[r.group] = n
	}
	names, ids := make([]string, len(rules)), make([]string, len(rules))
	for i, r := range rules {
		base := groups[r.group]
		if perGroup[r.group][b2i(r.credentials)] > 1 {
			base += "-" + strings.Join(r.endpoints, "-")
		}
		if r.credentials {
			base += "-credentials"
		}
		ids[i] = fmt.Sprint(r.group.key, r.endpoints, r.credentials)
		names[i] = ruleName(base, ids[i])
	}
	for i, n := range uniqueNames(names, ids) {
		rules[i].name = n
	}
}

// uniqueNames makes names unique; ids (unique) identify their owners. A
// name that stands once is kept. One that several share (App=Web and
// app=web, or a group called shop-web-credentials beside shop-web's
// credential rule) gets a hash of its owner's id, and a hashed name that is
// still taken is hashed again with a counter until it is free: pods choose
// their labels, so a group can be named after another's hash on purpose,
// and one name must never stand for two groups (--grant-credentials takes
// names). The result depends on the ids, not on the order given.
func uniqueNames(names, ids []string) []string {
	count := map[string]int{}
	for _, n := range names {
		count[n]++
	}
	out := make([]string, len(names))
	taken := map[string]bool{}
	var shared []int
	for i, n := range names {
		if count[n] == 1 {
			out[i], taken[n] = n, true
		} else {
			shared = append(shared, i)
		}
	}
	sort.Slice(shared, func(a, b int) bool { return ids[shared[a]] < ids[shared[b]] })
	for _, i := range shared {
		h := withHash(names[i], ids[i])
		for k := 1; taken[h]; k++ {
			h = withHash(names[i], fmt.Sprintf("%s#%d", ids[i], k))
		}
		out[i], taken[h] = h, true
	}
	return out
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

func sortedKeys(m map[string]bool) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
