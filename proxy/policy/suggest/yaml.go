package suggest

import (
	"bytes"
	"fmt"
	"strings"

	"go.yaml.in/yaml/v3"

	"metaguard.dev/metaguard/proxy/policy"
)

// namespaceNameLabel is set by the API server on every namespace; it is
// how a namespaceSelector picks one namespace by name.
const namespaceNameLabel = "kubernetes.io/metadata.name"

// Policy writes the suggested policy. The YAML is built as a node tree, so
// the encoder quotes what needs quoting (a label value "true", a version
// "1.0") and comments sit where a reviewer reads them. The result is
// checked with policy.Parse before it is returned: a suggestion that the
// proxy would refuse is a bug here, never the operator's problem.
func (s *Suggester) Policy() (Suggestion, error) {
	var src yaml.Node
	if err := yaml.Unmarshal(s.config, &src); err != nil || len(src.Content) == 0 {
		// New parsed the same bytes; this cannot fail.
		return Suggestion{}, fmt.Errorf("re-reading the policy in force: %v", err)
	}
	mode := s.opts.Mode
	if mode == "" {
		mode = s.pol.Mode
	}
	top := &yaml.Node{Kind: yaml.MappingNode}
	add := func(k, v *yaml.Node) { top.Content = append(top.Content, k, v) }
	add(str("apiVersion"), str(policy.APIVersion))
	add(str("kind"), str(policy.Kind))
	add(str("mode"), str(string(mode)))
	copyField(src.Content[0], "endpoints", add)
	add(str("defaultAction"), str("deny"))
	copyField(src.Content[0], "rateLimit", add)
	copyField(src.Content[0], "credentialPaths", add)

	names := s.groupNames()
	grant, err := s.checkGrants(names)
	if err != nil {
		return Suggestion{}, err
	}
	rules := s.rules(names, grant)
	seq := &yaml.Node{Kind: yaml.SequenceNode}
	if len(rules) == 0 {
		seq.Style = yaml.FlowStyle
		seq.LineComment = "no served request of an identified pod was seen: everything is denied"
	}
	sum := Suggestion{Rules: len(rules)}
	for _, r := range rules {
		seq.Content = append(seq.Content, s.ruleNode(r))
		if r.credentials {
			sum.CredentialRules++
		}
		for _, u := range r.unpinned {
			sum.Warnings = append(sum.Warnings, fmt.Sprintf("rule %s: %s; pin it with query: before enforcing", r.name, u))
		}
	}
	add(str("rules"), seq)
	for _, g := range s.sortedGroups() {
		if g.overPaths > 0 {
			sum.Warnings = append(sum.Warnings, fmt.Sprintf("group %s used more than %d distinct paths on one endpoint; %s past that were not learned",
				names[g], maxPaths, plural(g.overPaths, "request")))
		}
	}
	block, reviews := s.reviewBlock(names, grant)
	sum.Review = reviews

	st := s.Stats()
	doc := &yaml.Node{Kind: yaml.DocumentNode, Content: []*yaml.Node{top}}
	doc.HeadComment = strings.Join([]string{
		fmt.Sprintf(`Suggested by "metaguard suggest" from %s: %s of %s`,
			plural(st.Lines, "audit line"), plural(st.Used, "served request"), plural(int64(st.Groups), "pod group")),
		fmt.Sprintf("(grouped by %s). It allows what each group was seen to be served, and nothing more.", s.opts.GroupBy),
		"Review before enforcing. Every path names the pods that used it. A pattern marked",
		"\"stands for N used paths\" was collapsed from siblings that two pods or more used;",
		"a path one pod used stays literal, and no pattern is made on a generic endpoint.",
		"Rules with credentials: allow list each credential path; only reads the policy in",
		"force granted are carried forward, and other credential requests are listed for",
		"review at the end.",
		fmt.Sprintf("Endpoints, rateLimit and credentialPaths are those of %s.", commentSafe(s.source)),
	}, "\n")

	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return Suggestion{}, fmt.Errorf("writing the suggested policy: %w", err)
	}
	if err := enc.Close(); err != nil {
		return Suggestion{}, fmt.Errorf("writing the suggested policy: %w", err)
	}
	b.WriteString(block)
	if _, err := policy.Parse("suggested policy", b.Bytes()); err != nil {
		return Suggestion{}, fmt.Errorf("the suggested policy does not validate (a bug in suggest): %w", err)
	}
	sum.YAML = b.Bytes()
	return sum, nil
}

// who says which pods a group is, in words.
func (s *Suggester) who(k groupKey) string {
	switch {
	case k.kind == ByLabel:
		return fmt.Sprintf("pods labelled %s=%s in namespace %s", s.opts.GroupBy.Label, k.value, k.namespace)
	case k.kind == ByServiceAccount && s.opts.GroupBy.Kind == ByLabel:
		return fmt.Sprintf("pods without label %s, service account %s, in namespace %s (grouped by service account because they lack the label)",
			s.opts.GroupBy.Label, k.value, k.namespace)
	case k.kind == ByServiceAccount:
		return fmt.Sprintf("pods of service account %s in namespace %s", k.value, k.namespace)
	}
	return fmt.Sprintf("every pod in namespace %s", k.namespace)
}

func (s *Suggester) ruleNode(r *ruleOut) *yaml.Node {
	k := r.group.key
	m := &yaml.Node{Kind: yaml.MappingNode}
	add := func(key string, v *yaml.Node) { m.Content = append(m.Content, str(key), v) }
	add("name", str(r.name))

	switch {
	case k.kind == ByLabel:
		add("podSelector", mapping("matchLabels", mapping(s.opts.GroupBy.Label, str(k.value))))
	case k.kind == ByServiceAccount && s.opts.GroupBy.Kind == ByLabel:
		// Selecting the service account alone would also give these
		// paths to the pods of that account that do carry the label,
		// and they have rules of their own.
		req := mapping("key", str(s.opts.GroupBy.Label))
		req.Content = append(req.Content, str("operator"), str("DoesNotExist"))
		req.Style = yaml.FlowStyle
		add("podSelector", mapping("matchExpressions", &yaml.Node{Kind: yaml.SequenceNode, Content: []*yaml.Node{req}}))
	}
	add("namespaceSelector", mapping("matchLabels", mapping(namespaceNameLabel, str(k.namespace))))
	if k.kind == ByServiceAccount {
		add("serviceAccounts", flow(k.namespace+"/"+k.value))
	}
	if r.endpoints != nil {
		add("endpoints", flow(r.endpoints...))
	}

	pods, requests := r.pods()
	comment := []string{commentSafe(fmt.Sprintf("%s: %s by %s", s.who(k), plural(requests, "request"), r.group.pods.describe(pods)))}
	switch {
	case r.granted:
		comment = append(comment, "Reads credentials, so credentials: allow, for these paths only; the operator",
			"granted the reviewed ones with --grant-credentials:")
		comment = append(comment, r.notes...)
	case r.credentials:
		comment = append(comment, "Reads credentials, so credentials: allow, for these paths only:")
		comment = append(comment, r.notes...)
	}
	m.HeadComment = strings.Join(comment, "\n")

	allow := &yaml.Node{Kind: yaml.SequenceNode}
	for _, e := range r.entries {
		em := &yaml.Node{Kind: yaml.MappingNode}
		if e.methods != nil {
			em.Content = append(em.Content, str("methods"), flow(e.methods...))
		}
		paths := &yaml.Node{Kind: yaml.SequenceNode}
		for _, c := range e.paths {
			n := str(c.pattern)
			by := r.group.pods.describe(c.pods)
			if c.paths > 1 {
				n.LineComment = fmt.Sprintf("stands for %d used paths, by %s", c.paths, by)
			} else {
				n.LineComment = "by " + by
			}
			paths.Content = append(paths.Content, n)
		}
		em.Content = append(em.Content, str("paths"), paths)
		allow.Content = append(allow.Content, em)
	}
	add("allow", allow)
	if r.credentials {
		add("credentials", str("allow"))
	}
	return m
}

// copyField copies a top-level field of the policy in force, comments
// included, since they are the operator's.
func copyField(src *yaml.Node, key string, add func(k, v *yaml.Node)) {
	for i := 0; i+1 < len(src.Content); i += 2 {
		if src.Content[i].Value == key {
			add(deepCopy(src.Content[i]), deepCopy(src.Content[i+1]))
			return
		}
	}
}

// deepCopy copies n with aliases resolved: the anchor may sit in a part of
// the document (the old rules) that is not copied.
func deepCopy(n *yaml.Node) *yaml.Node {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		return deepCopy(n.Alias)
	}
	c := *n
	c.Anchor = ""
	c.Content = make([]*yaml.Node, len(n.Content))
	for i, child := range n.Content {
		c.Content[i] = deepCopy(child)
	}
	return &c
}

// str is a string scalar; the !!str tag makes the encoder quote values
// that would otherwise read back as booleans or numbers.
func str(v string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: v} }

func mapping(k string, v *yaml.Node) *yaml.Node {
	return &yaml.Node{Kind: yaml.MappingNode, Content: []*yaml.Node{str(k), v}}
}

func flow(vals ...string) *yaml.Node {
	n := &yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle}
	for _, v := range vals {
		n.Content = append(n.Content, str(v))
	}
	return n
}

func plural(n int64, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
