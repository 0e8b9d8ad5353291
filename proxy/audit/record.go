package audit

import (
	"net/netip"
	"time"
)

// Record is one request as the audit log tells it, or, when Suppressed is
// set, the summary of a source's denial lines that were over its budget.
type Record struct {
	Time           time.Time
	SrcIP          netip.Addr
	Pod            string
	Namespace      string
	PodUID         string
	ServiceAccount string
	// Labels are the pod's labels, shared with the identity cache: never
	// modified.
	Labels    map[string]string
	Endpoint  string
	Method    string
	Path      string
	QueryKeys []string
	Decision  Decision
	Rule      string
	Reason    Reason
	Status    int
	Bytes     int64
	Duration  time.Duration

	// Suppressed counts the denial lines of this source left out since its
	// last summary, by reason; only summary records carry it.
	Suppressed map[Reason]int
}

// Fields are the JSON names of a request record, in the order they are
// written. Summary records add "suppressed" and "suppressed_by_reason".
var Fields = []string{
	"time", "src_ip", "pod", "namespace", "pod_uid", "service_account", "labels",
	"endpoint", "method", "path", "query_keys", "decision", "rule", "reason",
	"status", "bytes", "duration_ms",
}

// Decision is what happened to a request, as logs and metrics name it.
type Decision uint8

// Decisions. The zero value is DecisionDeny: a record that was never
// decided is a refusal.
const (
	DecisionDeny Decision = iota
	DecisionAllow
	DecisionStrip
	// DecisionAuditDeny is a request enforce would deny that an audit mode
	// forwarded.
	DecisionAuditDeny
)

var decisionNames = [...]string{DecisionDeny: "deny", DecisionAllow: "allow", DecisionStrip: "strip", DecisionAuditDeny: "audit-deny"}

func (d Decision) String() string {
	if int(d) < len(decisionNames) {
		return decisionNames[d]
	}
	return "deny"
}

// Forwarded reports whether a request with this decision went upstream.
func (d Decision) Forwarded() bool { return d != DecisionDeny }

// ParseDecision reads a decision name; ok is false for anything else.
func ParseDecision(s string) (d Decision, ok bool) {
	for i, n := range decisionNames {
		if n == s {
			return Decision(i), true
		}
	}
	return DecisionDeny, false
}
