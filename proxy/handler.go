package proxy

import (
	"errors"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"metaguard.dev/metaguard/identity"
	"metaguard.dev/metaguard/proxy/audit"
	"metaguard.dev/metaguard/proxy/policy"
)

// exchange is one request on its way through the stages.
type exchange struct {
	pol      *policy.Policy
	ep       *policy.Endpoint
	canon    *CanonicalRequest
	id       identity.Identity
	decision policy.Decision
	rec      *audit.Record
	held     held // what the exchange took from the server's limits
}

type exchangeKey struct{}

// unknownPodRetry is the Retry-After of a request whose pod is not known
// yet: the informer usually catches up within a second or two.
const unknownPodRetry = "1"

// ServeHTTP runs a request through canonicalise, identify, decide and
// forward/strip/deny, then audits and counts it whatever happened.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rw := &recorder{ResponseWriter: w}
	rec := &audit.Record{SrcIP: remoteIP(r), Method: safeToken(r.Method), Path: safePath(r.RequestURI), Endpoint: "unknown"}
	defer func() {
		rec.Status, rec.Bytes, rec.Duration = rw.code(), rw.n, time.Since(start)
		s.cfg.Audit.Write(r.Context(), rec)
		s.m.observe(rec)
	}()

	pol := s.cfg.Policy()
	info, _ := r.Context().Value(connKey{}).(connInfo)
	ep, ok := pol.EndpointFor(info.dst)
	if !ok {
		// A connection straight to the proxy port, or one bound for an
		// endpoint a reload just removed: nothing to forward to.
		s.refuse(rw, rec, http.StatusForbidden, audit.ReasonUnknownEndpoint, "connection is not bound for a metadata endpoint")
		return
	}
	rec.Endpoint = ep.Name
	// What the service puts on its own errors goes on ours too (GCP
	// clients take Metadata-Flavor as proof they are on GCE). Set now,
	// so every answer of the proxy's own carries it; a forwarded answer
	// carries the upstream's instead (forward clears these first).
	for k, v := range ep.AnswerHeaders() {
		rw.Header().Set(k, v)
	}

	// Identify before judging the request's form, so that even a refused
	// probe (a "..", an encoded slash) is attributed to its pod in the
	// audit log: those are the lines an investigation looks for.
	id, idErr := s.cfg.Identities.Lookup(r.Context(), rec.SrcIP)
	if idErr == nil {
		setIdentity(rec, id)
	} else if r.Context().Err() != nil {
		// The client left while we waited for its identity.
		rec.Reason = audit.ReasonClientGone
		return
	}

	canon, rerr := Canonicalize(r, ep)
	if rerr != nil {
		reason := audit.ReasonMalformed
		if rerr.Status == http.StatusMethodNotAllowed {
			reason = audit.ReasonMethod
		}
		s.refuse(rw, rec, rerr.Status, reason, rerr.Reason)
		return
	}
	rec.Path, rec.QueryKeys = canon.Path, canon.QueryKeys
	if hasForwardedHeader(r.Header) {
		// The clouds refuse these to stop SSRF through a workload's own
		// proxy; stripping them would erase the evidence instead.
		s.refuse(rw, rec, http.StatusForbidden, audit.ReasonForwardedHeader, "requests carrying X-Forwarded-For, Forwarded or X-Forwarded-Host are refused")
		return
	}
	ex := &exchange{pol: pol, ep: ep, canon: canon, rec: rec, id: id, held: held{lim: s.lim}}

	// A request nobody can be held to is refused in every mode: audit
	// mode forwards what a known pod's rules would deny, never what no
	// rule can be written for.
	switch {
	case errors.Is(idErr, identity.ErrAmbiguous):
		s.deny(rw, ex, http.StatusForbidden, audit.ReasonAmbiguousIP)
		return
	case errors.Is(idErr, identity.ErrNotFound):
		// Transient: a pod seen by the kernel before the informer. The
		// SDKs retry a 503, never a 403.
		rw.Header().Set("Retry-After", unknownPodRetry)
		s.deny(rw, ex, http.StatusServiceUnavailable, audit.ReasonUnknownPod)
		return
	case idErr != nil:
		s.log.Warn("identity lookup failed", "src_ip", rec.SrcIP, "error", idErr)
		rw.Header().Set("Retry-After", unknownPodRetry)
		s.deny(rw, ex, http.StatusServiceUnavailable, audit.ReasonIdentityError)
		return
	}
	if err := pol.Invalid(); err != nil {
		// No valid policy was ever loaded: nothing is allowed until one is.
		rw.Header().Set("Retry-After", "5")
		s.refuse(rw, rec, http.StatusServiceUnavailable, audit.ReasonPolicyInvalid, "no valid policy is loaded: "+err.Error())
		return
	}

	ex.decision = pol.Decide(id, policy.Request{Endpoint: ep, Method: canon.Method, Path: canon.Path, Query: canon.Query})
	rec.Decision, rec.Rule, rec.Reason = ex.decision.Label(), ex.decision.Rule, ex.decision.Reason
	if !ex.decision.Forwarded() {
		s.writeDenial(rw, ex, http.StatusForbidden)
		return
	}
	if !s.limiter.allow(limiterKey(ex), pol.RateLimit) {
		rw.Header().Set("Retry-After", "1")
		s.deny(rw, ex, http.StatusTooManyRequests, audit.ReasonRateLimited)
		return
	}
	if !s.lim.admit(ex) {
		// Over a budget: refused now rather than queued behind the pod
		// that filled it.
		rw.Header().Set("Retry-After", "1")
		s.deny(rw, ex, http.StatusServiceUnavailable, audit.ReasonOverloaded)
		return
	}
	s.rp.forward(rw, r, ex)
}

func setIdentity(rec *audit.Record, id identity.Identity) {
	rec.Pod, rec.Namespace, rec.PodUID = id.Name, id.Namespace, id.UID
	rec.ServiceAccount, rec.Labels = id.ServiceAccount, id.Labels
}

func limiterKey(ex *exchange) string {
	if ex.id.UID != "" {
		return ex.id.UID
	}
	return ex.rec.SrcIP.String()
}

func hasForwardedHeader(h http.Header) bool {
	return len(h["X-Forwarded-For"]) > 0 || len(h["Forwarded"]) > 0 || len(h["X-Forwarded-Host"]) > 0
}

// refuse answers a request refused before any policy decision.
func (s *Server) refuse(rw *recorder, rec *audit.Record, status int, reason audit.Reason, msg string) {
	rec.Decision, rec.Rule, rec.Reason = audit.DecisionDeny, "", reason
	writeLine(rw, status, "metaguard: "+msg)
}

// deny refuses a canonical request for a reason of the proxy's own, after
// or instead of the policy's decision.
func (s *Server) deny(rw *recorder, ex *exchange, status int, reason audit.Reason) {
	ex.rec.Decision, ex.rec.Rule, ex.rec.Reason = audit.DecisionDeny, "", reason
	s.writeDenial(rw, ex, status)
}

// writeDenial answers a denial with one line that tells an operator what to
// fix: the pod, the reason and the rule.
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
		b.WriteString(ex.rec.SrcIP.String())
	}
	b.WriteString(": ")
	b.WriteString(ex.rec.Reason.String())
	if ex.rec.Rule != "" {
		b.WriteString(" (rule ")
		b.WriteString(ex.rec.Rule)
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

// remoteIP is the client's address, as addrOf reads a connection's: parsed
// from RemoteAddr directly, because passing the string as a net.Addr cost
// an allocation on every request.
func remoteIP(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

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
