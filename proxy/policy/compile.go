package policy

import (
	"fmt"
	"maps"
	"math"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/util/validation"
)

// compiler turns a fileSpec into a Policy, collecting every problem with
// its line instead of stopping at the first.
type compiler struct {
	doc      *yaml.Node
	problems []Problem
}

func (c *compiler) fail(path fieldPath, format string, args ...any) {
	c.problems = append(c.problems, Problem{
		Line:  lineOf(c.doc, path),
		Field: path.String(),
		Msg:   fmt.Sprintf(format, args...),
	})
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$`)

func (c *compiler) compile(s *fileSpec) *Policy {
	p := &Policy{byAddr: map[netip.AddrPort]*Endpoint{}}
	if s.APIVersion != APIVersion {
		c.fail(fieldPath{"apiVersion"}, "must be %q, got %q", APIVersion, s.APIVersion)
	}
	if s.Kind != Kind {
		c.fail(fieldPath{"kind"}, "must be %q, got %q", Kind, s.Kind)
	}
	p.Mode = c.mode(fieldPath{"mode"}, s.Mode, ModeEnforce)
	switch s.DefaultAction {
	case "", "deny":
		p.DefaultAction = Deny
	case "allow":
		p.DefaultAction = Allow
	default:
		c.fail(fieldPath{"defaultAction"}, "must be deny or allow, got %q", s.DefaultAction)
	}
	if s.RateLimit != nil {
		p.RateLimit = c.rateLimit(s.RateLimit)
	}

	var extraCreds []pattern
	for i, text := range s.CredentialPaths {
		pat, err := compilePattern(text)
		if err != nil {
			c.fail(fieldPath{"credentialPaths", i}, "%v", err)
			continue
		}
		extraCreds = append(extraCreds, pat)
	}

	if len(s.Endpoints) == 0 {
		c.fail(fieldPath{"endpoints"}, "at least one endpoint is required: metaguard intercepts nothing without one")
	}
	names := map[string]bool{}
	for i := range s.Endpoints {
		if e := c.endpoint(fieldPath{"endpoints", i}, &s.Endpoints[i], extraCreds); e != nil {
			if names[e.Name] {
				c.fail(fieldPath{"endpoints", i, "name"}, "duplicate endpoint name %q", e.Name)
			}
			if _, dup := p.byAddr[e.Addr]; dup {
				c.fail(fieldPath{"endpoints", i, "address"}, "duplicate endpoint address %s", e.Addr)
			}
			names[e.Name] = true
			p.byAddr[e.Addr] = e
			p.endpoints = append(p.endpoints, e)
		}
	}

	ruleNames := map[string]bool{}
	var specs []*ruleSpec
	for i := range s.Rules {
		path := fieldPath{"rules", i}
		r := c.rule(path, &s.Rules[i], names)
		if r == nil {
			continue
		}
		if ruleNames[r.name] {
			c.fail(append(path, "name"), "duplicate rule name %q", r.name)
		}
		ruleNames[r.name] = true
		p.rules = append(p.rules, r)
		specs = append(specs, &s.Rules[i])
	}
	p.index = buildIndex(specs, p.rules)
	return p
}

func (c *compiler) mode(path fieldPath, s string, def Mode) Mode {
	switch s {
	case "":
		return def
	case string(ModeEnforce), string(ModeAudit):
		return Mode(s)
	}
	c.fail(path, "must be enforce or audit, got %q", s)
	return def
}

func (c *compiler) rateLimit(s *rateLimitSpec) RateLimit {
	path := fieldPath{"rateLimit"}
	if s.RequestsPerSecond <= 0 || math.IsInf(s.RequestsPerSecond, 0) || math.IsNaN(s.RequestsPerSecond) {
		c.fail(append(path, "requestsPerSecond"), "must be a positive number")
	}
	burst := s.Burst
	if burst == 0 {
		burst = int(math.Ceil(s.RequestsPerSecond))
	}
	if burst < 1 {
		c.fail(append(path, "burst"), "must be at least 1")
	}
	return RateLimit{RequestsPerSecond: s.RequestsPerSecond, Burst: burst}
}

func (c *compiler) endpoint(path fieldPath, s *endpointSpec, extraCreds []pattern) *Endpoint {
	ok := true
	if !nameRE.MatchString(s.Name) {
		c.fail(append(path, "name"), "must be a lower-case DNS-style name, got %q", s.Name)
		ok = false
	}
	addr, err := netip.ParseAddrPort(s.Address)
	if err != nil || addr.Port() == 0 || addr.Addr().Zone() != "" {
		c.fail(append(path, "address"), "must be IP:port or [IPv6]:port with a non-zero port, got %q", s.Address)
		ok = false
	}
	spec, known := flavors[Flavor(s.Flavor)]
	if !known {
		c.fail(append(path, "flavor"), "must be aws, gcp, azure or generic, got %q", s.Flavor)
		ok = false
	}
	if !ok {
		return nil
	}
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	e := &Endpoint{Name: s.Name, Addr: addr, Flavor: Flavor(s.Flavor), spec: spec, hosts: map[string]bool{}}
	for _, h := range append(append([]string{}, spec.hosts...), s.Hosts...) {
		e.hosts[strings.ToLower(h)] = true
	}
	a := addr.Addr().String()
	if addr.Addr().Is6() {
		a = "[" + a + "]"
	}
	e.hosts[a+fmt.Sprintf(":%d", addr.Port())] = true
	if addr.Port() == 80 {
		e.hosts[a] = true
	}
	for _, text := range spec.credentialPaths {
		e.creds = append(e.creds, mustPattern(text))
	}
	for _, text := range spec.writes {
		e.writes = append(e.writes, mustPattern(text))
	}
	for _, pat := range extraCreds {
		if e.Flavor == FlavorAWS {
			pat = mustPattern(widenAWSVersion(pat.text))
		}
		e.creds = append(e.creds, pat)
	}
	return e
}

func mustPattern(text string) pattern {
	p, err := compilePattern(text)
	if err != nil {
		panic(fmt.Sprintf("built-in pattern %q: %v", text, err))
	}
	return p
}

func (c *compiler) rule(path fieldPath, s *ruleSpec, endpoints map[string]bool) *rule {
	r := &rule{name: s.Name}
	if !nameRE.MatchString(s.Name) {
		c.fail(append(path, "name"), "must be a lower-case DNS-style name, got %q", s.Name)
	}
	r.mode = c.mode(append(path, "mode"), s.Mode, "")
	r.podSelector = c.selector(append(path, "podSelector"), s.PodSelector)
	r.namespaceSel = c.selector(append(path, "namespaceSelector"), s.NamespaceSelector)
	pinned := pinnedNamespace(s.NamespaceSelector)
	for i, sa := range s.ServiceAccounts {
		if ref, ok := c.serviceAccount(append(path, "serviceAccounts", i), sa, pinned); ok {
			r.serviceAccounts = append(r.serviceAccounts, ref)
		}
	}
	if len(s.Endpoints) > 0 {
		r.endpoints = map[string]bool{}
		for i, name := range s.Endpoints {
			if !endpoints[name] {
				c.fail(append(path, "endpoints", i), "no endpoint is named %q", name)
			}
			r.endpoints[name] = true
		}
	}
	switch s.Credentials {
	case "", "strip":
	case "allow":
		r.credentialsAllow = true
	default:
		c.fail(append(path, "credentials"), "must be strip or allow, got %q", s.Credentials)
	}
	for i := range s.Allow {
		if a, ok := c.allow(append(path, "allow", i), &s.Allow[i]); ok {
			r.allow = append(r.allow, a)
		}
	}
	return r
}

// serviceAccount reads a serviceAccounts entry: "namespace/name", or a bare
// name when the rule's namespaceSelector pins exactly one namespace.
func (c *compiler) serviceAccount(path fieldPath, text, pinned string) (serviceAccountRef, bool) {
	ns, name, qualified := strings.Cut(text, "/")
	if !qualified {
		if pinned == "" {
			c.fail(path, "service account %q names no namespace: write it as namespace/name; a bare name would match a service account of that name in every namespace, and any tenant can create one in theirs (a bare name is accepted only when namespaceSelector pins one namespace with matchLabels kubernetes.io/metadata.name)", text)
			return serviceAccountRef{}, false
		}
		ns, name = pinned, text
	}
	ok := true
	if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
		c.fail(path, "service account %q: namespace %q: %s", text, ns, strings.Join(errs, "; "))
		ok = false
	}
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		c.fail(path, "service account %q: name %q: %s", text, name, strings.Join(errs, "; "))
		ok = false
	}
	if qualified && pinned != "" && ns != pinned {
		c.fail(path, "service account %q is in namespace %q, but namespaceSelector selects only %q: the rule could never select it", text, ns, pinned)
		ok = false
	}
	return serviceAccountRef{namespace: ns, name: name}, ok
}

// namespaceNameLabel is the label the API server puts on every namespace:
// its own name.
const namespaceNameLabel = "kubernetes.io/metadata.name"

// pinnedNamespace returns the one namespace a namespaceSelector can select
// by its name label, or "" when it can select more.
func pinnedNamespace(s *selectorSpec) string {
	if s == nil {
		return ""
	}
	if v, ok := s.MatchLabels[namespaceNameLabel]; ok {
		return v
	}
	for _, e := range s.MatchExpressions {
		if e.Key == namespaceNameLabel && e.Operator == string(metav1.LabelSelectorOpIn) && len(uniq(e.Values)) == 1 {
			return e.Values[0]
		}
	}
	return ""
}

func (c *compiler) allow(path fieldPath, s *allowSpec) (allowEntry, bool) {
	ok := true
	a := allowEntry{methods: s.Methods}
	if len(a.methods) == 0 {
		a.methods = []string{"GET", "HEAD"}
	}
	for i, m := range a.methods {
		if m != "GET" && m != "HEAD" && m != "PUT" && m != "DELETE" {
			c.fail(append(path, "methods", i), "must be GET, HEAD, PUT or DELETE, got %q", m)
			ok = false
		}
	}
	if len(s.Paths) == 0 {
		c.fail(append(path, "paths"), "at least one path pattern is required")
		ok = false
	}
	for i, text := range s.Paths {
		p, err := compilePattern(text)
		if err != nil {
			c.fail(append(path, "paths", i), "%v", err)
			ok = false
			continue
		}
		a.paths = append(a.paths, p)
	}
	for k, vals := range s.Query {
		if k == "" {
			c.fail(append(path, "query"), "empty query key")
			ok = false
		}
		if len(vals) == 0 {
			c.fail(append(path, "query", k), "list at least one allowed value; an entry that can never match is a mistake")
			ok = false
		}
	}
	a.query = s.Query
	return a, ok
}

// selector converts the YAML selector to a labels.Selector with
// metav1.LabelSelector semantics: absent or empty selects everything.
func (c *compiler) selector(path fieldPath, s *selectorSpec) labels.Selector {
	if s == nil {
		return labels.Everything()
	}
	// LabelSelectorAsSelector walks matchLabels in map order and stops at
	// the first bad entry; checking them in key order first makes the
	// error the same on every run.
	for _, k := range slices.Sorted(maps.Keys(s.MatchLabels)) {
		if _, err := labels.NewRequirement(k, selection.Equals, []string{s.MatchLabels[k]}); err != nil {
			c.fail(path, "%v", err)
			return labels.Nothing()
		}
	}
	ls := &metav1.LabelSelector{MatchLabels: s.MatchLabels}
	for _, r := range s.MatchExpressions {
		ls.MatchExpressions = append(ls.MatchExpressions, metav1.LabelSelectorRequirement{
			Key: r.Key, Operator: metav1.LabelSelectorOperator(r.Operator), Values: r.Values,
		})
	}
	sel, err := metav1.LabelSelectorAsSelector(ls)
	if err != nil {
		c.fail(path, "%v", err)
		return labels.Nothing()
	}
	return sel
}
