package policy

import (
	"net/netip"
	"strings"

	"k8s.io/apimachinery/pkg/labels"
)

// Mode says whether denials are enforced.
type Mode string

// Policy-wide and per-rule modes.
const (
	ModeEnforce Mode = "enforce"
	// ModeAudit forwards what enforce would deny and logs it as
	// audit-deny, so a policy can be rolled out without breaking anyone.
	ModeAudit Mode = "audit"
)

// Policy is a parsed, validated and compiled policy document. It is
// immutable once built, so one value can be shared by every request while
// a reload swaps in another.
type Policy struct {
	Source        string
	Mode          Mode
	DefaultAction Action
	// RateLimit is the per-pod token bucket; zero RequestsPerSecond means
	// no limit.
	RateLimit RateLimit

	endpoints []*Endpoint
	byAddr    map[netip.AddrPort]*Endpoint
	rules     []*rule
	index     ruleIndex
}

// RateLimit is a per-pod token bucket protecting the node's IMDS quota.
type RateLimit struct {
	RequestsPerSecond float64
	Burst             int
}

// Endpoint is one intercepted metadata service.
type Endpoint struct {
	Name   string
	Addr   netip.AddrPort
	Flavor Flavor

	spec  flavorSpec
	hosts map[string]bool
	creds []pattern
}

// Endpoints returns the policy's endpoints in file order.
func (p *Policy) Endpoints() []*Endpoint { return p.endpoints }

// EndpointFor returns the endpoint a connection was originally bound for.
func (p *Policy) EndpointFor(addr netip.AddrPort) (*Endpoint, bool) {
	e, ok := p.byAddr[netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())]
	return e, ok
}

// EndpointByName returns the endpoint called name.
func (p *Policy) EndpointByName(name string) (*Endpoint, bool) {
	for _, e := range p.endpoints {
		if e.Name == name {
			return e, true
		}
	}
	return nil, false
}

// RuleNames returns the rule names in file order.
func (p *Policy) RuleNames() []string {
	names := make([]string, len(p.rules))
	for i, r := range p.rules {
		names[i] = r.name
	}
	return names
}

// MethodAllowed reports whether the endpoint's API serves method at all.
func (e *Endpoint) MethodAllowed(method string) bool {
	for _, m := range e.spec.methods {
		if m == method {
			return true
		}
	}
	return false
}

// QueryKeys returns the query keys the endpoint's API knows, or nil when
// queries are passed through unchecked (generic endpoints).
func (e *Endpoint) QueryKeys() map[string]bool { return e.spec.queryKeys }

// UpstreamHost returns the Host header to send upstream: the client's when
// it names this endpoint (GCP clients send metadata.google.internal and the
// server checks it), otherwise the endpoint's own address. The upstream
// address itself always comes from the endpoint, never from Host.
func (e *Endpoint) UpstreamHost(clientHost string) string {
	if clientHost != "" && e.hosts[strings.ToLower(clientHost)] {
		return clientHost
	}
	if e.Addr.Port() == 80 {
		if e.Addr.Addr().Is6() {
			return "[" + e.Addr.Addr().String() + "]"
		}
		return e.Addr.Addr().String()
	}
	return e.Addr.String()
}

// IsCredential reports whether path is in the endpoint's credential class.
func (e *Endpoint) IsCredential(path string) bool {
	for _, c := range e.creds {
		if c.match(path) {
			return true
		}
	}
	return false
}

// mayListCredentials reports whether a response for path can name a
// credential path: a directory listing or recursive dump of an ancestor of
// the credential class.
func (e *Endpoint) mayListCredentials(path string) bool {
	for _, c := range e.creds {
		if c.hasDescendant(path) {
			return true
		}
	}
	return false
}

type rule struct {
	name             string
	mode             Mode
	podSelector      labels.Selector
	namespaceSel     labels.Selector
	serviceAccounts  []string
	endpoints        map[string]bool // nil: every endpoint
	allow            []allowEntry
	credentialsAllow bool
}

type allowEntry struct {
	methods []string
	paths   []pattern
	query   map[string][]string
}

func (r *rule) selects(podLabels, nsLabels map[string]string, sa string, ep *Endpoint) bool {
	if r.endpoints != nil && !r.endpoints[ep.Name] {
		return false
	}
	if len(r.serviceAccounts) > 0 && !contains(r.serviceAccounts, sa) {
		return false
	}
	return r.podSelector.Matches(labels.Set(podLabels)) && r.namespaceSel.Matches(labels.Set(nsLabels))
}

func (a *allowEntry) allows(req *Request) bool {
	if !contains(a.methods, req.Method) {
		return false
	}
	for k, vals := range a.query {
		got, ok := req.Query[k]
		if !ok || len(got) != 1 || !contains(vals, got[0]) {
			return false
		}
	}
	for _, p := range a.paths {
		if p.match(req.Path) {
			return true
		}
	}
	return false
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
