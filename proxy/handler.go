package proxy

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"metaguard.dev/metaguard/identity"
	"metaguard.dev/metaguard/proxy/policy"
)

// Reasons the proxy decides on its own, before or besides the policy.
const (
	reasonUnknownEndpoint = "unknown-endpoint"
	reasonForwardedHeader = "forwarded-header"
	reasonUnknownPod      = "unknown-pod"
	reasonAmbiguousIP     = "ambiguous-ip"
	reasonIdentityError   = "identity-error"
	reasonRateLimited     = "rate-limited"
)

// exchange is one request on its way through the stages.
type exchange struct {
	pol      *policy.Policy
	ep       *policy.Endpoint
	canon    *CanonicalRequest
	id       identity.Identity
	decision policy.Decision
	rec      *auditRecord
}

type exchangeKey struct{}

// ServeHTTP runs a request through canonicalise, identify, decide and
// forward/strip/deny, then audits and counts it whatever happened.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rw := &recorder{ResponseWriter: w}
	rec := &auditRecord{src: addrOf(remoteAddr(r)), method: safeToken(r.Method), path: safePath(r.RequestURI), endpoint: "unknown", decision: "deny"}
	defer func() {
		rec.status, rec.bytes, rec.duration = rw.code(), rw.n, time.Since(start)
		s.audit.write(r.Context(), rec)
		code := strconv.Itoa(rec.status)
		s.m.requests.WithLabelValues(rec.endpoint, rec.decision, code).Inc()
		s.m.duration.WithLabelValues(rec.endpoint, rec.decision).Observe(rec.duration.Seconds())
	}()

	pol := s.cfg.Policy()
	info, _ := r.Context().Value(connKey{}).(connInfo)
	ep, ok := pol.EndpointFor(info.dst)
	if !ok {
		// A connection straight to the proxy port, or one bound for an
		// endpoint a reload just removed: nothing to forward to.
		s.refuse(rw, rec, http.StatusForbidden, reasonUnknownEndpoint, "connection is not bound for a metadata endpoint")
		return
	}
	rec.endpoint = ep.Name

	// Identify before judging the request's form, so that even a refused
	// probe (a "..", an encoded slash) is attributed to its pod in the
	// audit log: those are the lines an investigation looks for.
	id, idErr := s.cfg.Identities.Lookup(r.Context(), rec.src)
	if idErr == nil {
		rec.id = id
	} else if r.Context().Err() != nil {
		// The client left while we waited for its identity.
		rec.reason = "client-gone"
		return
	}

	canon, rerr := Canonicalize(r, ep)
	if rerr != nil {
		s.refuse(rw, rec, rerr.Status, "malformed-request", rerr.Reason)
		return
	}
	rec.path, rec.queryKeys = canon.Path, canon.QueryKeys
	if hasForwardedHeader(r.Header) {
		// The clouds refuse these to stop SSRF through a workload's own
		// proxy; stripping them would erase the evidence instead.
		s.refuse(rw, rec, http.StatusForbidden, reasonForwardedHeader, "requests carrying X-Forwarded-For, Forwarded or X-Forwarded-Host are refused")
		return
	}

	ex := &exchange{pol: pol, ep: ep, canon: canon, rec: rec, id: id}
	switch {
	case idErr == nil:
		ex.decision = pol.Decide(id, policy.Request{Endpoint: ep, Method: canon.Method, Path: canon.Path, Query: canon.Query})
	case errors.Is(idErr, identity.ErrAmbiguous):
		ex.decision = unidentified(pol, reasonAmbiguousIP)
	case errors.Is(idErr, identity.ErrNotFound):
		ex.decision = unidentified(pol, reasonUnknownPod)
	default:
		s.log.Warn("identity lookup failed", "src_ip", rec.src, "error", idErr)
		ex.decision = unidentified(pol, reasonIdentityError)
	}
	rec.decision, rec.rule, rec.reason = ex.decision.Label(), ex.decision.Rule, ex.decision.Reason

	if ex.decision.Forwarded() && !s.limiter.allow(limiterKey(ex), pol.RateLimit) {
		rec.decision, rec.rule, rec.reason = "deny", "", reasonRateLimited
		rw.Header().Set("Retry-After", "1")
		s.writeDenial(rw, ex, http.StatusTooManyRequests)
		return
	}
	if !ex.decision.Forwarded() {
		s.writeDenial(rw, ex, http.StatusForbidden)
		return
	}
	s.rp.forward(rw, r, ex)
}

// unidentified is the decision for a request whose pod is not known:
// deny, except that a policy in audit mode forwards it and says so.
func unidentified(pol *policy.Policy, reason string) policy.Decision {
	return policy.Decision{Action: policy.Deny, Audit: pol.Mode == policy.ModeAudit, Reason: reason}
}

func limiterKey(ex *exchange) string {
	if ex.id.UID != "" {
		return ex.id.UID
	}
	return ex.rec.src.String()
}

func hasForwardedHeader(h http.Header) bool {
	return len(h["X-Forwarded-For"]) > 0 || len(h["Forwarded"]) > 0 || len(h["X-Forwarded-Host"]) > 0
}

// refuse answers a request refused before any policy decision.
func (s *Server) refuse(rw *recorder, rec *auditRecord, status int, reason, msg string) {
	rec.decision, rec.reason = "deny", reason
	writeLine(rw, status, "metaguard: "+msg)
}

// writeDenial answers a policy denial with one line that tells an operator
// what to fix: the pod, the reason and the rule.
func (s *Server) writeDenial(rw *recorder, ex *exchange, status int) {
	var b strings.Builder
	b.WriteString("metaguard: denied ")
	b.WriteString(ex.canon.Method)
	b.WriteByte(' ')
	b.WriteString(ex.canon.Path)
	b.WriteString(" for ")
	if ex.id.Name != "" {
		b.WriteString("pod ")
		b.WriteString(ex.id.String())
	} else {
		b.WriteString("unidentified source ")
		b.WriteString(ex.rec.src.String())
	}
	b.WriteString(": ")
	b.WriteString(ex.rec.reason)
	if ex.rec.rule != "" {
		b.WriteString(" (rule ")
		b.WriteString(ex.rec.rule)
		b.WriteString(")")
	} else {
		b.WriteString(" (no rule)")
	}
	writeLine(rw, status, b.String())
}

func writeLine(w http.ResponseWriter, status int, line string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Length", strconv.Itoa(len(line)+1))
	w.WriteHeader(status)
	_, _ = w.Write([]byte(line + "\n"))
}

func remoteAddr(r *http.Request) netAddr { return netAddr(r.RemoteAddr) }

// netAddr adapts http.Request.RemoteAddr to net.Addr for addrOf.
type netAddr string

func (a netAddr) Network() string { return "tcp" }
func (a netAddr) String() string  { return string(a) }

// safePath is the raw request path for the audit log of a request refused
// before canonicalisation: the part before "?" (query values can be
// secrets), bounded and printable.
func safePath(target string) string {
	p, _, _ := strings.Cut(target, "?")
	return printable(p, 256)
}

func safeToken(s string) string { return printable(s, 16) }

func printable(s string, max int) string {
	ok := len(s) <= max
	for i := 0; ok && i < len(s); i++ {
		ok = s[i] > ' ' && s[i] < 0x7f
	}
	if ok {
		return s
	}
	q := strconvQuote(s)
	return q[1 : len(q)-1]
}

// recorder remembers the status and body size written to the client.
type recorder struct {
	http.ResponseWriter
	status int
	n      int64
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 && code >= 200 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(b)
	r.n += int64(n)
	return n, err
}

func (r *recorder) code() int {
	if r.status == 0 {
		// Nothing was written: the client went away first.
		return 499
	}
	return r.status
}

// Flush and Unwrap keep streaming (GCP long polls) and
// http.ResponseController working through the recorder.
func (r *recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
