package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"metaguard.dev/metaguard/proxy/policy"
)

// A strip decision's answer is made by the stripper from a complete 200
// body, or it is refused: nothing the upstream sends reaches the pod
// unexamined. The request asks for exactly that (stripRequest), and the
// answer carries only what can be derived from the stripped body
// (stripAnswer), so its length and validators cannot depend on the
// entries removed.

// stripRequestHeaders are the only request headers forwarded for a strip
// decision: what the metadata services require or clients identify with.
// Ranges, validators (If-None-Match on a hidden entry's ETag would say it
// changed), Accept-Encoding and anything a future server might honour are
// left out by construction.
var stripRequestHeaders = []string{"Metadata-Flavor", "Metadata", "X-Aws-Ec2-Metadata-Token", "User-Agent", "Accept"}

// maxStripPolls bounds the upstream long polls one pod's wait_for_change
// on a stripped listing may cost while only hidden entries change.
const maxStripPolls = 32

// stripRequest makes the outbound request of a strip decision ask for the
// whole resource, plainly: GET (HEAD is answered from the stripped GET),
// only stripRequestHeaders, and for a long poll no wait: the proxy waits
// itself, for a change the pod may see (waitForVisibleChange).
func stripRequest(out *http.Request, ex *exchange) {
	out.Method = http.MethodGet
	h := make(http.Header, len(stripRequestHeaders))
	for _, k := range stripRequestHeaders {
		if v, ok := out.Header[k]; ok {
			h[k] = v
		}
	}
	if _, ok := h["User-Agent"]; !ok {
		// Keep net/http from adding its own.
		h["User-Agent"] = []string{""}
	}
	out.Header = h
	if ex.longPolls() {
		out.URL.RawQuery = withoutWait(ex.canon.Query).Encode()
	}
}

func withoutWait(q url.Values) url.Values {
	out := make(url.Values, len(q))
	for k, v := range q {
		switch k {
		case "wait_for_change", "last_etag", "timeout_sec":
		default:
			out[k] = v
		}
	}
	return out
}

// stripTarget is what a strip answer is made for.
type stripTarget struct {
	path  string
	query url.Values
	keep  func(string) bool
}

func (ex *exchange) stripTarget() stripTarget {
	return stripTarget{path: ex.canon.Path, query: ex.canon.Query, keep: func(p string) bool {
		return ex.pol.CanRead(ex.id, ex.ep, p)
	}}
}

// answer is a response the proxy writes itself.
type answer struct {
	status int
	header http.Header
	body   []byte
}

// stripAnswer turns the upstream's answer to a strip request into the
// pod's. A 200 is stripped; its ETag, if the upstream sent one, is
// replaced by one over the stripped body. A redirect to the listing's own
// directory is kept. A 4xx or 5xx keeps its status (an SDK refreshes its
// IMDSv2 token on 401) with the proxy's own one-line body. Anything else
// (206, 304, other 2xx and 3xx) cannot be made from a complete body and is
// refused.
func stripAnswer(t stripTarget, status int, h http.Header, body []byte) (answer, error) {
	switch {
	case status == http.StatusOK:
		return strip200(t, h, body)
	case status == http.StatusMovedPermanently || status == http.StatusFound ||
		status == http.StatusTemporaryRedirect || status == http.StatusPermanentRedirect:
		loc, err := url.Parse(h.Get("Location"))
		if err != nil || loc.Path != t.path+"/" {
			return answer{}, fmt.Errorf("%w: redirect elsewhere than the listing's directory", errUnstrippable)
		}
		target := t.path + "/"
		if len(t.query) > 0 {
			target += "?" + t.query.Encode()
		}
		return answer{status: status, header: http.Header{"Location": {target}, "Content-Length": {"0"}}}, nil
	case status >= 400 && status <= 599:
		line := fmt.Sprintf("metaguard: the metadata service answered %d %s\n", status, http.StatusText(status))
		hdr := http.Header{"Content-Type": {"text/plain; charset=utf-8"}, "Content-Length": {strconv.Itoa(len(line))}}
		if status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable {
			// The proxy's own advice: the upstream's could carry anything.
			hdr.Set("Retry-After", "1")
		}
		return answer{status: status, header: hdr, body: []byte(line)}, nil
	}
	return answer{}, fmt.Errorf("%w: status %d", errUnstrippable, status)
}

func strip200(t stripTarget, h http.Header, body []byte) (answer, error) {
	if ce := h.Get("Content-Encoding"); ce != "" && ce != "identity" {
		return answer{}, fmt.Errorf("%w: Content-Encoding %s", errUnstrippable, ce)
	}
	body, err := stripBody(t, h.Get("Content-Type"), body)
	if err != nil {
		return answer{}, err
	}
	hdr := http.Header{"Content-Length": {strconv.Itoa(len(body))}}
	if ct := safeContentType(h.Get("Content-Type")); ct != "" {
		hdr.Set("Content-Type", ct)
	}
	if h.Get("Etag") != "" {
		hdr.Set("Etag", etagOf(body))
	}
	return answer{status: http.StatusOK, header: hdr, body: body}, nil
}

// stripBody strips a 200 body in the shape the request and the upstream's
// Content-Type say it has. Which shape is chosen never depends on a hidden
// entry: a declared JSON type is JSON or refused; an undeclared body that
// looks like JSON but does not parse is a listing, whose first line (the
// only one sniffing looked at) then goes the way of any other.
func stripBody(t stripTarget, contentType string, body []byte) ([]byte, error) {
	recursive := t.query.Get("recursive") == "true"
	textDump := t.query.Get("alt") == "text"
	declared := jsonType(contentType)
	if !textDump && (declared || (contentType == "" && looksLikeJSON(body))) {
		out, _, err := StripJSON(body, t.path, t.keep)
		if err == nil || declared {
			return out, err
		}
	}
	if recursive {
		// A recursive dump that is not JSON is GCP's alt=text: a value may
		// span lines, so there is no safe place to cut out a secret, and
		// refusing only when one was found would tell the pod it exists.
		return nil, fmt.Errorf("%w: a recursive text dump of a listing that may hold credentials", errUnstrippable)
	}
	if textDump {
		out, _, err := StripText(body, t.path, false, t.keep)
		return out, err
	}
	out, _ := StripListing(body, t.path, t.keep)
	return out, nil
}

func jsonType(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	return err == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json"))
}

func looksLikeJSON(body []byte) bool {
	b := bytes.TrimLeft(body, " \t\r\n")
	return len(b) > 0 && (b[0] == '{' || b[0] == '[')
}

// safeContentType keeps a content type's media type and a plain charset,
// nothing an upstream could carry a hidden name in.
func safeContentType(ct string) string {
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil {
		return ""
	}
	switch cs := strings.ToLower(params["charset"]); cs {
	case "utf-8", "us-ascii":
		return mt + "; charset=" + cs
	}
	return mt
}

// etagOf is the validator of a stripped body: it changes exactly when
// what the pod may see changes.
func etagOf(body []byte) string {
	sum := sha256.Sum256(body)
	return hex.EncodeToString(sum[:8])
}

// apply puts the answer into the upstream response ReverseProxy relays.
func (a answer) apply(resp *http.Response) {
	resp.StatusCode = a.status
	resp.Status = strconv.Itoa(a.status) + " " + http.StatusText(a.status)
	resp.Header = a.header
	resp.Trailer = nil
	resp.Body = io.NopCloser(bytes.NewReader(a.body))
	resp.ContentLength = int64(len(a.body))
	resp.TransferEncoding = nil
	resp.Uncompressed = false
}

// stripResponse replaces the upstream's answer to a strip decision with
// the pod's.
func (f *forwarder) stripResponse(resp *http.Response, ex *exchange) error {
	t := ex.stripTarget()
	a, err := f.stripped(resp, ex, t)
	if err != nil {
		return err
	}
	if a.status == http.StatusOK && ex.longPolls() {
		if a, err = f.waitForVisibleChange(resp.Request, resp.Header.Get("Etag"), a, ex, t); err != nil {
			return err
		}
	}
	// Every answer a strip makes is the proxy's own, so it carries what
	// the service puts on its answers (GCP clients check Metadata-Flavor
	// to know they talk to the metadata server), as the proxy's other
	// answers do.
	for k, v := range ex.ep.AnswerHeaders() {
		a.header.Set(k, v)
	}
	a.apply(resp)
	return nil
}

// stripped reads an upstream answer and makes the pod's from it, holding
// the bytes both take from the strip budget.
func (f *forwarder) stripped(resp *http.Response, ex *exchange, t stripTarget) (answer, error) {
	// The stripped copy is at most as large as the body. When the body's
	// length is known, the copy is charged before anything is read, so
	// that under a flood a request either holds all it needs or is refused
	// at once, rather than reading a body and then losing the copy's share
	// to requests that came later.
	copyHeld := resp.ContentLength >= 0 && resp.ContentLength <= maxStripBytes
	if copyHeld && !f.s.lim.holdStrip(ex, resp.ContentLength) {
		resp.Body.Close()
		return answer{}, errOverloaded
	}
	body, err := f.readForStrip(resp, ex)
	if err != nil {
		return answer{}, err
	}
	if !copyHeld && !f.s.lim.holdStrip(ex, int64(len(body))) {
		return answer{}, errOverloaded
	}
	return stripAnswer(t, resp.StatusCode, resp.Header, body)
}

// readForStrip reads a whole upstream body into memory, within
// maxStripBytes and the strip budget, and closes it. The budget is charged
// for the buffer's capacity as it grows, not only for the bytes in it.
func (f *forwarder) readForStrip(resp *http.Response, ex *exchange) ([]byte, error) {
	defer resp.Body.Close()
	if resp.ContentLength > maxStripBytes {
		return nil, fmt.Errorf("%w: larger than %d bytes", errUnstrippable, maxStripBytes)
	}
	var buf []byte
	grow := func(to int) error {
		to = min(to, maxStripBytes+1) // one more byte tells a body over the bound
		if !f.s.lim.holdStrip(ex, int64(to-cap(buf))) {
			return errOverloaded
		}
		b := make([]byte, len(buf), to)
		copy(b, buf)
		buf = b
		return nil
	}
	first := 4 << 10
	if resp.ContentLength >= 0 {
		first = int(resp.ContentLength) + 1
	}
	if err := grow(first); err != nil {
		return nil, err
	}
	for {
		if len(buf) == cap(buf) {
			if len(buf) > maxStripBytes {
				return nil, fmt.Errorf("%w: larger than %d bytes", errUnstrippable, maxStripBytes)
			}
			if err := grow(2 * cap(buf)); err != nil {
				return nil, err
			}
		}
		n, err := resp.Body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if len(buf) > maxStripBytes {
			return nil, fmt.Errorf("%w: larger than %d bytes", errUnstrippable, maxStripBytes)
		}
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return nil, fmt.Errorf("reading response to strip: %w", err)
		}
	}
}

// waitForVisibleChange answers a GCP wait_for_change on a stripped listing:
// the upstream's ETag and its wait see changes of hidden entries too, so
// the proxy asks the upstream for the current version without waiting,
// and, while the pod has already seen that version (its last_etag is the
// stripped body's ETag, or it sent none), long-polls the upstream itself
// until the stripped body changes, the pod's timeout_sec runs out
// (answered with the current version, as GCP does) or maxStripPolls
// upstream changes were invisible.
func (f *forwarder) waitForVisibleChange(first *http.Request, upTag string, cur answer, ex *exchange, t stripTarget) (answer, error) {
	seen := ex.canon.Query.Get("last_etag")
	if upTag == "" || (seen != "" && seen != cur.header.Get("Etag")) {
		return cur, nil
	}
	seen = cur.header.Get("Etag")
	ctx := first.Context()
	deadline, _ := ctx.Deadline()
	held := ex.held.strip
	for range maxStripPolls {
		secs := int((time.Until(deadline) - f.s.cfg.UpstreamTimeout) / time.Second)
		if secs < 1 {
			break
		}
		q := withoutWait(ex.canon.Query)
		q.Set("wait_for_change", "true")
		q.Set("last_etag", upTag)
		q.Set("timeout_sec", strconv.Itoa(secs))
		req := first.Clone(ctx)
		req.URL.RawQuery = q.Encode()
		resp, err := f.rt.RoundTrip(req)
		if err != nil {
			if errors.Is(ctx.Err(), context.DeadlineExceeded) || (timedOut(ctx, err) && ctx.Err() == nil) {
				break // the pod's wait is over: it gets the version it has
			}
			return answer{}, err
		}
		f.s.lim.strip.release(ex.rec.SrcIP, held) // the previous version is replaced
		ex.held.strip -= held
		before := ex.held.strip
		next, err := f.stripped(resp, ex, t)
		held = ex.held.strip - before
		if err != nil || next.status != http.StatusOK || next.header.Get("Etag") != seen {
			return next, err
		}
		cur, upTag = next, resp.Header.Get("Etag")
		if upTag == "" {
			break
		}
	}
	return cur, nil
}

// visibleEntry reports whether a listing under base may show the entry
// name: only a plain relative path (no "..", ".", "//" or byte outside
// the canonical alphabet: a real listing has none, and a client might
// resolve one to somewhere else) that the pod may read, with and without
// a directory's trailing slash.
func visibleEntry(base, name string, keep func(string) bool) bool {
	if name == "" {
		return true
	}
	dir := strings.TrimSuffix(name, "/")
	if dir == "" || policy.CanonicalPath("/"+name) != "" {
		return false
	}
	return keep(base+name) && keep(base+dir) && keep(base+dir+"/")
}
