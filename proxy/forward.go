package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"metaguard.dev/metaguard/proxy/audit"
	"metaguard.dev/metaguard/proxy/policy"
)

// forwarder sends allowed requests to their endpoint and relays the
// answer, or, for a strip decision, the answer rebuilt by the stripper.
type forwarder struct {
	s  *Server
	rt http.RoundTripper
	rp *httputil.ReverseProxy
}

func newForwarder(s *Server, transport http.RoundTripper) *forwarder {
	if transport == nil {
		transport = newUpstreamTransport(s.cfg.DialContext, s.cfg.Budget.InFlight)
	}
	f := &forwarder{s: s, rt: transport}
	f.rp = &httputil.ReverseProxy{
		// Rewrite, not Director: Director appends X-Forwarded-For, which
		// makes AWS refuse the IMDSv2 token PUT and GCP and Azure refuse
		// everything (the kube2iam/kiam bug). Rewrite adds nothing unless
		// asked to, and drops inbound X-Forwarded-* and Forwarded.
		Rewrite:        f.rewrite,
		Transport:      transport,
		ModifyResponse: f.modifyResponse,
		ErrorHandler:   f.upstreamError,
		BufferPool:     bufferPool{},
		// Errors the reverse proxy logs itself (a body copy that broke
		// off) go to the operational log as JSON like everything else.
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	return f
}

func (f *forwarder) forward(rw *recorder, r *http.Request, ex *exchange) {
	timeout := f.s.cfg.UpstreamTimeout + longPoll(ex)
	ctx, cancel := context.WithTimeout(context.WithValue(r.Context(), exchangeKey{}, ex), timeout)
	defer cancel()
	defer ex.releaseHeld()
	for k := range ex.ep.AnswerHeaders() {
		// The upstream's answer carries its own; an error of ours puts
		// them back (upstreamError).
		rw.Header().Del(k)
	}
	rc := http.NewResponseController(rw)
	_ = rc.SetWriteDeadline(time.Now().Add(timeout + 5*time.Second))
	if r.ContentLength != 0 {
		// Slowloris with a body: the headers came in time, now the body
		// must too.
		_ = rc.SetReadDeadline(time.Now().Add(readHeaderTimeout))
		r.Body = http.MaxBytesReader(rw, r.Body, maxBodyBytes)
	}
	f.rp.ServeHTTP(rw, r.WithContext(ctx))
}

// longPoll is the extra time a GCP wait_for_change request may hang
// upstream: its own timeout_sec, capped.
func longPoll(ex *exchange) time.Duration {
	if !ex.longPolls() {
		return 0
	}
	secs, err := strconv.Atoi(ex.canon.Query.Get("timeout_sec"))
	if err != nil || secs <= 0 || time.Duration(secs)*time.Second > maxLongPoll {
		return maxLongPoll
	}
	return time.Duration(secs) * time.Second
}

// longPolls reports whether the request is a GCP wait_for_change.
func (ex *exchange) longPolls() bool {
	return ex.ep.Flavor == policy.FlavorGCP && ex.canon.Query.Get("wait_for_change") == "true"
}

func (f *forwarder) rewrite(pr *httputil.ProxyRequest) {
	ex := pr.In.Context().Value(exchangeKey{}).(*exchange)
	// The upstream address comes from the endpoint, never from Host or
	// the request-target; the path and query are the ones judged.
	pr.Out.URL = &url.URL{Scheme: "http", Host: ex.ep.Addr.String(), Path: ex.canon.Path, RawQuery: ex.canon.RawQuery}
	pr.Out.Host = ex.ep.UpstreamHost(pr.In.Host)
	h := pr.Out.Header
	// Never tell the metadata service there is a proxy in between; the
	// X-Forwarded-* family and Forwarded are already gone.
	h.Del("Via")
	h.Del("X-Real-Ip")
	for k := range h {
		if strings.HasPrefix(k, "X-Forwarded-") {
			delete(h, k)
		}
	}
	if pr.In.ContentLength != 0 || pr.In.Method == http.MethodHead {
		// A request with a body never shares a connection: an upstream
		// that answered without reading the body would answer the body
		// too, and that answer must not be waiting for the next pod's
		// request on a pooled connection. Nor does a HEAD, whose answer
		// an upstream might follow with a body nobody asked for.
		pr.Out.Close = true
	}
	if ex.decision.Action == policy.Strip {
		stripRequest(pr.Out, ex)
	}
}

func (f *forwarder) modifyResponse(resp *http.Response) error {
	ex := resp.Request.Context().Value(exchangeKey{}).(*exchange)
	if ex.decision.Action == policy.Strip {
		return f.stripResponse(resp, ex)
	}
	resp.Body = &limitedBody{ReadCloser: resp.Body, left: f.s.cfg.MaxResponseBytes}
	return nil
}

// upstreamError answers a forwarded request that failed: 503 when the
// proxy's own budget ran out, 504 when the upstream was too slow, 502 for
// anything else. Never a silent relay.
func (f *forwarder) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	ex := r.Context().Value(exchangeKey{}).(*exchange)
	if errors.Is(r.Context().Err(), context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		// The client went away; there is nobody to answer.
		return
	}
	for k, v := range ex.ep.AnswerHeaders() {
		w.Header().Set(k, v)
	}
	if errors.Is(err, errOverloaded) {
		ex.rec.Decision, ex.rec.Rule, ex.rec.Reason = audit.DecisionDeny, "", audit.ReasonOverloaded
		w.Header().Set("Retry-After", "1")
		writeLine(w, http.StatusServiceUnavailable, "metaguard: too busy; retry")
		return
	}
	f.s.m.upstreamErrors.WithLabelValues(ex.ep.Name).Inc()
	status, what := http.StatusBadGateway, "upstream failed"
	switch {
	case timedOut(r.Context(), err):
		status, what = http.StatusGatewayTimeout, "upstream timed out"
	case errors.Is(err, errUnstrippable):
		what = "upstream response could not be stripped safely"
	}
	f.s.log.Warn("upstream request failed", "endpoint", ex.ep.Name, "path", ex.canon.Path, "error", err)
	writeLine(w, status, "metaguard: "+what)
}

// timedOut tells whether a forwarded request failed because its deadline
// passed. A connect cut short by the deadline can surface as the poller's
// os.ErrDeadlineExceeded rather than context.DeadlineExceeded, so the
// request's own context is the final word.
func timedOut(ctx context.Context, err error) bool {
	return errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, os.ErrDeadlineExceeded) ||
		errors.Is(ctx.Err(), context.DeadlineExceeded)
}

// limitedBody stops relaying a response after a bound; the client sees a
// truncated body and a closed connection rather than an unbounded stream.
type limitedBody struct {
	io.ReadCloser
	left int64
}

var errResponseTooLarge = errors.New("upstream response too large")

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, errResponseTooLarge
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	return n, err
}

// bufferPool recycles the 32 KiB copy buffers of the reverse proxy.
type bufferPool struct{}

var buffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (bufferPool) Get() []byte  { return *(buffers.Get().(*[]byte)) }
func (bufferPool) Put(b []byte) { buffers.Put(&b) }
