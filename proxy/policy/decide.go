package policy

import (
	"fmt"
	"net/url"

	"metaguard.dev/metaguard/identity"
	"metaguard.dev/metaguard/proxy/audit"
)

// Action is what happens to a request.
type Action uint8

// Actions, from most to least permissive.
const (
	// Deny answers 403 and forwards nothing.
	Deny Action = iota
	// Allow forwards the request and relays the response unchanged.
	Allow
	// Strip forwards the request and removes credential entries from the
	// directory listing or recursive dump in the response.
	Strip
)

func (a Action) String() string {
	switch a {
	case Allow:
		return "allow"
	case Strip:
		return "strip"
	default:
		return "deny"
	}
}

// Request is a canonical request: Path has passed CanonicalPath, Query
// holds only validated keys with one value each.
type Request struct {
	Endpoint *Endpoint
	Method   string
	Path     string
	Query    url.Values
}

// Decision is the outcome of evaluating a request against the policy.
type Decision struct {
	Action Action
	// Audit is set when enforce would deny but an audit mode (the
	// policy's or a selecting rule's) lets the request through: the
	// request is forwarded as is and logged as audit-deny.
	Audit bool
	// Rule names the deciding rule; empty when no rule decided.
	Rule string
	// Reason is the stable code for logs, metrics and deny messages.
	Reason audit.Reason
}

// Label is the decision as the audit log and metrics name it.
func (d Decision) Label() audit.Decision {
	switch {
	case d.Audit:
		return audit.DecisionAuditDeny
	case d.Action == Allow:
		return audit.DecisionAllow
	case d.Action == Strip:
		return audit.DecisionStrip
	}
	return audit.DecisionDeny
}

// Forwarded reports whether the request goes upstream.
func (d Decision) Forwarded() bool { return d.Action != Deny || d.Audit }

// Decide evaluates req for the pod id. It is pure and allocation-free: the
// same inputs always give the same decision.
func (p *Policy) Decide(id identity.Identity, req Request) Decision {
	return p.decide(id, &req, nil)
}

// trace records why a decision was made, for explain.
type trace struct {
	selected []string
	allowing []string
}

func (p *Policy) decide(id identity.Identity, req *Request, tr *trace) Decision {
	ep := req.Endpoint
	if !ep.Serves(req.Method, req.Path) {
		// Not a policy question: the API does not serve the method
		// there, so no mode turns this into a forward.
		return Decision{Action: Deny, Reason: audit.ReasonMethod}
	}
	credential := ep.IsCredential(req.Path)

	var (
		selected, auditing bool
		allowRule          string // first rule that allows the request
		credRule           string // first allowing rule with credentials: allow
	)
	var buf [32]int32
	for _, i := range p.index.candidates(buf[:0], id.Labels, id.NamespaceLabels, id.Namespace, id.ServiceAccount) {
		r := p.rules[i]
		if !r.selects(&id, ep) {
			continue
		}
		selected = true
		auditing = auditing || r.mode == ModeAudit
		if tr != nil {
			tr.selected = append(tr.selected, r.name)
		}
		for i := range r.allow {
			if !r.allow[i].allows(req) {
				continue
			}
			if tr != nil {
				tr.allowing = append(tr.allowing, r.name)
			}
			if allowRule == "" {
				allowRule = r.name
			}
			if r.credentialsAllow && credRule == "" {
				credRule = r.name
			}
			break
		}
	}
	auditing = auditing || p.Mode == ModeAudit
	listing := ep.mayListCredentials(req.Path)

	var d Decision
	switch {
	case !selected && p.DefaultAction == Deny:
		d = Decision{Action: Deny, Reason: audit.ReasonNoRule}
	case !selected && req.Method != "GET" && req.Method != "HEAD":
		// defaultAction: allow opens reading the API; a write (GCP guest
		// attributes feed the SSH host keys clients trust) needs a rule
		// that names it.
		d = Decision{Action: Deny, Reason: audit.ReasonNoRule}
	case !selected:
		// Nor does it open the credential class: credentials are
		// reachable only through a rule that says so.
		switch {
		case credential:
			d = Decision{Action: Deny, Reason: audit.ReasonCredentialPath}
		case listing:
			d = Decision{Action: Strip, Reason: audit.ReasonCredentialsHidden}
		default:
			d = Decision{Action: Allow, Reason: audit.ReasonDefaultAllow}
		}
	case allowRule == "":
		d = Decision{Action: Deny, Reason: audit.ReasonNotAllowed}
	case credRule != "" && (credential || listing):
		d = Decision{Action: Allow, Rule: credRule, Reason: audit.ReasonCredentialsAllowed}
	case credential:
		d = Decision{Action: Deny, Rule: allowRule, Reason: audit.ReasonCredentialPath}
	case listing:
		d = Decision{Action: Strip, Rule: allowRule, Reason: audit.ReasonCredentialsHidden}
	default:
		d = Decision{Action: Allow, Rule: allowRule, Reason: audit.ReasonAllowed}
	}
	if d.Action == Deny && auditing {
		d = auditDecision(d, credential, listing)
	}
	return d
}

// auditDecision is what an audit mode makes of a denial: forward it and log
// it as audit-deny, so a rollout breaks nobody, but never widen access to
// the credential class. Pod labels are the workload owner's to set, so a
// rule's audit mode (and the policy's, which every pod is under) must not
// hand the node's credentials to a pod that labels itself into it, nor to
// pods that a hop limit or a NetworkPolicy kept out before metaguard: a
// credential read stays a plain denial, and a listing that may name
// credentials is forwarded stripped.
func auditDecision(d Decision, credential, listing bool) Decision {
	switch {
	case credential:
		d.Reason = audit.ReasonCredentialPath
	case listing:
		d.Action, d.Audit = Strip, true
	default:
		d.Audit = true
	}
	return d
}

// CanRead reports whether the pod may see path itself on ep: the test
// applied to each entry of a listing being stripped.
func (p *Policy) CanRead(id identity.Identity, ep *Endpoint, path string) bool {
	if !ep.IsCredential(path) {
		return true
	}
	d := p.decide(id, &Request{Endpoint: ep, Method: "GET", Path: path}, nil)
	return d.Action == Allow
}

// Explanation is a decision with the reasoning behind it, for operators.
type Explanation struct {
	Decision Decision
	// Selecting names every rule that selects the pod; Allowing those
	// that also allow the method, path and query.
	Selecting  []string
	Allowing   []string
	Credential bool // the path is in the credential class
	Listing    bool // responses may name credential paths (strip applies)
	Why        string
}

// Explain evaluates req like Decide and says why.
func (p *Policy) Explain(id identity.Identity, req Request) Explanation {
	var tr trace
	d := p.decide(id, &req, &tr)
	x := Explanation{
		Decision:   d,
		Selecting:  tr.selected,
		Allowing:   tr.allowing,
		Credential: req.Endpoint.IsCredential(req.Path),
		Listing:    req.Endpoint.mayListCredentials(req.Path),
	}
	switch d.Reason {
	case audit.ReasonMethod:
		x.Why = fmt.Sprintf("the %s endpoint %q does not serve %s on this path", req.Endpoint.Flavor, req.Endpoint.Name, req.Method)
	case audit.ReasonNoRule:
		x.Why = "no rule selects this pod and defaultAction is deny"
		if p.DefaultAction == Allow {
			x.Why = "no rule selects this pod, and defaultAction allow opens GET and HEAD only: a write needs a rule that names it"
		}
	case audit.ReasonDefaultAllow:
		x.Why = "no rule selects this pod and defaultAction is allow"
	case audit.ReasonNotAllowed:
		x.Why = fmt.Sprintf("rules %v select this pod but none allows %s %s", tr.selected, req.Method, req.Path)
	case audit.ReasonCredentialPath:
		switch {
		case len(tr.selected) > 0 && d.Rule == "":
			x.Why = "the path is a credential path and no selecting rule allows it with credentials: allow; audit mode never forwards credential reads"
		case d.Rule == "":
			x.Why = "the path is a credential path and defaultAction never opens credentials"
		default:
			x.Why = fmt.Sprintf("the path is a credential path and no allowing rule says credentials: allow (allowing: %v)", tr.allowing)
		}
	case audit.ReasonCredentialsHidden:
		x.Why = "the response may list credential paths; they are removed from it"
	case audit.ReasonCredentialsAllowed:
		x.Why = fmt.Sprintf("rule %q allows the path and says credentials: allow", d.Rule)
	case audit.ReasonAllowed:
		x.Why = fmt.Sprintf("rule %q allows %s %s", d.Rule, req.Method, req.Path)
	}
	if d.Audit {
		x.Why += "; audit mode forwards it anyway and logs audit-deny"
		if d.Action == Strip {
			x.Why += ", with credential entries removed from the response"
		}
	}
	return x
}
