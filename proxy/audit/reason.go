package audit

import "slices"

// Reason is the stable code that says why a request was decided the way it
// was. Every reason is declared here, with who decides it; the proxy,
// policy and suggest use these values and never spell a code themselves.
type Reason struct {
	code string
	by   decider
}

type decider uint8

const (
	byNobody decider = iota // a code this version does not know
	byPolicy
	byProxy
)

// registry holds every declared reason by code, filled as they are declared.
var registry = map[string]Reason{}

func declare(code string, by decider) Reason {
	if _, dup := registry[code]; dup {
		panic("audit: reason " + code + " declared twice")
	}
	r := Reason{code: code, by: by}
	registry[code] = r
	return r
}

// Reasons decided by the policy: the pod was identified and its rules (or
// defaultAction) gave the answer.
var (
	ReasonAllowed            = declare("allowed", byPolicy)
	ReasonCredentialsAllowed = declare("credentials-allowed", byPolicy)
	ReasonCredentialsHidden  = declare("credentials-stripped", byPolicy)
	ReasonDefaultAllow       = declare("default-allow", byPolicy)
	ReasonNoRule             = declare("no-rule-selects-pod", byPolicy)
	ReasonNotAllowed         = declare("not-allowed-by-rules", byPolicy)
	ReasonCredentialPath     = declare("credential-path", byPolicy)
)

// Reasons decided by the proxy before or beside the policy: the request's
// form, the caller's identity, the gate's own limits. Such a line says
// nothing about what a pod's rule should allow.
var (
	ReasonMethod            = declare("method-not-served", byProxy)
	ReasonUnknownEndpoint   = declare("unknown-endpoint", byProxy)
	ReasonMalformed         = declare("malformed-request", byProxy)
	ReasonForwardedHeader   = declare("forwarded-header", byProxy)
	ReasonUnknownPod        = declare("unknown-pod", byProxy)
	ReasonAmbiguousIP       = declare("ambiguous-ip", byProxy)
	ReasonIdentityError     = declare("identity-error", byProxy)
	ReasonRateLimited       = declare("rate-limited", byProxy)
	ReasonOverloaded        = declare("overloaded", byProxy)
	ReasonPolicyInvalid     = declare("policy-invalid", byProxy)
	ReasonClientGone        = declare("client-gone", byProxy)
	ReasonDenialsSuppressed = declare("denials-suppressed", byProxy)
)

func (r Reason) String() string { return r.code }

// IsZero reports whether r is the zero Reason (no reason recorded).
func (r Reason) IsZero() bool { return r.code == "" }

// DecidedByPolicy reports whether the policy made this decision for an
// identified pod. It is false for the proxy's own reasons and for codes this
// version does not know.
func (r Reason) DecidedByPolicy() bool { return r.by == byPolicy }

// Known reports whether r is a reason this version declares.
func (r Reason) Known() bool { return r.by != byNobody }

// ParseReason returns the declared reason with this code, or an unknown
// reason carrying the code (Known and DecidedByPolicy are false).
func ParseReason(code string) Reason {
	if r, ok := registry[code]; ok {
		return r
	}
	return Reason{code: code}
}

// Reasons lists every declared reason, sorted by code.
func Reasons() []Reason {
	out := make([]Reason, 0, len(registry))
	for _, r := range registry {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b Reason) int {
		switch {
		case a.code < b.code:
			return -1
		case a.code > b.code:
			return 1
		}
		return 0
	})
	return out
}
