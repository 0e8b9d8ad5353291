package policy

import (
	"net/netip"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/labels"

	"metaguard.dev/metaguard/identity"
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
	// invalid is set on the placeholder FailClosed builds: no valid policy
	// was ever loaded, so nothing is allowed.
	invalid error
}

// Invalid returns why no valid policy is in force, or nil. A policy with an
// error is FailClosed's placeholder: it intercepts its endpoints and
// allows nothing.
func (p *Policy) Invalid() error { return p.invalid }

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

	spec   flavorSpec
	hosts  map[string]bool
	creds  []pattern
	writes []pattern // compiled spec.writes
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

// MethodAllowed reports whether the endpoint's API serves method at all,
// on some path.
func (e *Endpoint) MethodAllowed(method string) bool {
	return slices.Contains(e.spec.methods, method)
}

// Serves reports whether the endpoint's API serves method on path: PUT
// and DELETE only where the API takes writes (the AWS token, GCP guest
// attributes).
func (e *Endpoint) Serves(method, path string) bool {
	if !e.MethodAllowed(method) {
		return false
	}
	if (method != "PUT" && method != "DELETE") || e.spec.writes == nil {
		return true
	}
	for _, w := range e.writes {
		if w.match(path) {
			return true
		}
	}
	return false
}

// AnswerHeaders are the headers the service puts on every answer, which
// metaguard's own answers for this endpoint carry too.
func (e *Endpoint) AnswerHeaders() map[string]string { return e.spec.answerHeaders }

// AcceptsBody reports whether a request with method may carry a body: only
// a PUT, and only where the API defines one. A body anywhere else is a
// request hidden inside a request, waiting for an upstream that does not
// read it.
func (e *Endpoint) AcceptsBody(method string) bool {
	return method == "PUT" && e.spec.putBody
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
	serviceAccounts  []serviceAccountRef
	endpoints        map[string]bool // nil: every endpoint
	allow            []allowEntry
	credentialsAllow bool
}

type allowEntry struct {
	methods []string
	paths   []pattern
	query   map[string][]string
}

// serviceAccountRef names one service account. A name alone would match
// the same name in every namespace, and creating a service account is an
// ordinary tenant right, so a rule always knows the namespace too.
type serviceAccountRef struct{ namespace, name string }

func (r *rule) selects(id *identity.Identity, ep *Endpoint) bool {
	if r.endpoints != nil && !r.endpoints[ep.Name] {
		return false
	}
	if len(r.serviceAccounts) > 0 && !slices.Contains(r.serviceAccounts, serviceAccountRef{id.Namespace, id.ServiceAccount}) {
		return false
	}
	return r.podSelector.Matches(labels.Set(id.Labels)) && r.namespaceSel.Matches(labels.Set(id.NamespaceLabels))
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
	if a.pinsIdentity(req.Endpoint) {
		// An entry pinning one identity (Azure client_id) must not let a
		// request name a second one beside it (msi_res_id, object_id):
		// which one the service honours is its business, not the rule's.
		for _, k := range req.Endpoint.spec.identityKeys {
			if _, pinned := a.query[k]; !pinned && req.Query.Has(k) {
				return false
			}
		}
	}
	for _, p := range a.paths {
		if p.match(req.Path) {
			return true
		}
	}
	return false
}

// pinsIdentity reports whether the entry constrains a query key that picks
// an identity on ep.
func (a *allowEntry) pinsIdentity(ep *Endpoint) bool {
	for _, k := range ep.spec.identityKeys {
		if _, ok := a.query[k]; ok {
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
