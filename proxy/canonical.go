package proxy

import (
	"net/http"
	"net/url"
	"sort"
	"strings"

	"metaguard.dev/metaguard/proxy/policy"
)

// CanonicalRequest is a request that passed every check of Canonicalize:
// what the policy judges and exactly what is forwarded.
type CanonicalRequest struct {
	Method string
	Path   string
	// Query holds the validated parameters; RawQuery is what is sent
	// upstream, re-encoded from them (or passed unchanged for generic
	// endpoints).
	Query    url.Values
	RawQuery string
	// QueryKeys are the parameter names, sorted, for the audit log. Values
	// are never logged: they can be tokens.
	QueryKeys []string
}

// RequestError is a request refused before identity or policy are
// consulted, with the status to answer.
type RequestError struct {
	Status int
	Reason string
}

func (e *RequestError) Error() string { return e.Reason }

func badRequest(reason string) *RequestError {
	return &RequestError{Status: http.StatusBadRequest, Reason: reason}
}

// maxPathBytes bounds the request path; metadata paths are short.
const maxPathBytes = 2048

// Canonicalize checks r against everything docs/design.md's request path
// refuses and returns the canonical request, or the error to answer.
//
// It works on the raw request-target (r.RequestURI), never on r.URL.Path:
// Go decodes "%2F" into "/" in URL.Path, so validating the decoded path and
// forwarding the raw one (or the reverse) lets "/latest/meta-data%2Fiam"
// through a check on "/latest/meta-data/..." or past a deny of ".../iam".
// Refusing every percent-encoding makes raw and decoded the same bytes.
func Canonicalize(r *http.Request, ep *policy.Endpoint) (*CanonicalRequest, *RequestError) {
	target := r.RequestURI
	if target == "" || target[0] != '/' {
		// absolute-form ("http://host/..."), asterisk-form ("*") and
		// CONNECT's authority-form: a metadata client never sends them,
		// and they are how requests get aimed somewhere other than the
		// endpoint.
		return nil, badRequest("request-target is not origin-form")
	}
	if r.Method == http.MethodConnect {
		return nil, badRequest("CONNECT is not served")
	}
	if !ep.MethodAllowed(r.Method) {
		return nil, &RequestError{Status: http.StatusMethodNotAllowed, Reason: "method not served by this endpoint"}
	}
	if len(target) > maxPathBytes {
		return nil, &RequestError{Status: http.StatusRequestURITooLong, Reason: "request-target too long"}
	}
	if strings.IndexByte(target, '#') >= 0 {
		return nil, badRequest("fragment in request-target")
	}
	rawPath, rawQuery, hasQuery := strings.Cut(target, "?")
	if why := policy.CanonicalPath(rawPath); why != "" {
		return nil, badRequest(why)
	}
	if r.ProtoMajor != 1 {
		return nil, badRequest("only HTTP/1.x is served")
	}
	if h := r.Header; len(h["Upgrade"]) > 0 || headerHasToken(h, "Connection", "upgrade") {
		return nil, badRequest("protocol upgrade refused")
	}
	if len(r.Header["Expect"]) > 0 {
		return nil, badRequest("Expect refused")
	}
	if len(r.TransferEncoding) > 0 {
		// A chunked body is never needed (the only body, a PUT's, is
		// tiny), and net/http drops Content-Length when both are sent, so
		// a request framed twice cannot be told apart from a chunked one:
		// refuse them all rather than rely on which framing wins.
		return nil, badRequest("Transfer-Encoding refused")
	}
	if !ep.Serves(r.Method, rawPath) {
		return nil, &RequestError{Status: http.StatusMethodNotAllowed, Reason: r.Method + " is not served on this path"}
	}
	if r.ContentLength != 0 && !ep.AcceptsBody(r.Method) {
		// The API defines no body here (GET, HEAD, the AWS token PUT): a
		// body can only be a second request, waiting for an upstream that
		// answers without reading it and then answers the hidden one too.
		return nil, badRequest("a body on " + r.Method + " is refused: the API defines none here")
	}

	c := &CanonicalRequest{Method: r.Method, Path: rawPath}
	if !hasQuery || rawQuery == "" {
		return c, nil
	}
	known := ep.QueryKeys()
	if known == nil {
		// Generic endpoints pass the query unchanged, but only printable
		// ASCII: it goes upstream byte for byte.
		for i := 0; i < len(rawQuery); i++ {
			if b := rawQuery[i]; b <= ' ' || b >= 0x7f {
				return nil, badRequest("query has a control, space or non-ASCII byte")
			}
		}
		c.RawQuery = rawQuery
		return c, nil
	}
	if strings.IndexByte(rawQuery, ';') >= 0 {
		// Old servers split on ";" too; refusing it removes the
		// disagreement about what the keys are.
		return nil, badRequest("';' in query")
	}
	c.Query = make(url.Values)
	for _, part := range strings.Split(rawQuery, "&") {
		k, v, _ := strings.Cut(part, "=")
		key, err1 := url.QueryUnescape(k)
		val, err2 := url.QueryUnescape(v)
		switch {
		case err1 != nil || err2 != nil:
			return nil, badRequest("query does not parse")
		case key == "":
			return nil, badRequest("empty query key")
		case !known[key]:
			return nil, badRequest("unknown query key " + strconvQuote(key))
		case c.Query.Has(key):
			return nil, badRequest("duplicate query key " + strconvQuote(key))
		}
		if allowed, ok := strictValues[key]; ok && known[key] && !allowed[val] {
			// These values pick how a response is laid out, and so which
			// stripper examines it: a spelling the proxy does not know
			// (recursive=TRUE, alt=Text) could make a dump pass for a
			// listing.
			return nil, badRequest("query value of " + strconvQuote(key) + " is not one the proxy understands")
		}
		c.Query[key] = []string{val}
		c.QueryKeys = append(c.QueryKeys, key)
	}
	sort.Strings(c.QueryKeys)
	c.RawQuery = c.Query.Encode()
	return c, nil
}

// strictValues are the only values accepted for query keys that change a
// response's layout.
var strictValues = map[string]map[string]bool{
	"recursive":       {"true": true, "false": true},
	"alt":             {"json": true, "text": true},
	"wait_for_change": {"true": true, "false": true},
	// GCP token binding: which transport the token is bound to.
	"transport":           {"mtls": true, "alts": true},
	"binding-enforcement": {"on": true},
}

// headerHasToken reports whether a comma-separated header has token,
// case-insensitively.
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h[name] {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// strconvQuote quotes s for an error message, keeping it printable ASCII
// so a hostile key cannot inject into the one-line response or the logs.
func strconvQuote(s string) string {
	const max = 64
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s) && i < max; i++ {
		c := s[i]
		if c < ' ' || c >= 0x7f || c == '"' || c == '\\' {
			b.WriteByte('?')
			continue
		}
		b.WriteByte(c)
	}
	if len(s) > max {
		b.WriteString("...")
	}
	b.WriteByte('"')
	return b.String()
}
