package fakecloud

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"html"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// What GCE's metadata server does at the HTTP level, and where each
// behaviour is documented. "Docs" is
// https://cloud.google.com/compute/docs/metadata/querying-metadata; the
// header set and error pages are also what the GCE metadata emulator
// github.com/salrashid123/gce_metadata_server (server.go) reproduces from
// the real server.
//
//   - Every answer, errors included, carries Metadata-Flavor: Google;
//     cloud.google.com/go/compute/metadata decides OnGCE from that header on
//     a GET / sent without Metadata-Flavor (metadataRequestStrategy), and
//     ignores the status.
//   - /computeMetadata/v1 requires Metadata-Flavor: Google and answers 403
//     with Google's HTML error page otherwise (docs: "Query metadata").
//   - Requests that carry X-Forwarded-For are refused (docs: the metadata
//     server refuses proxied requests, the SSRF defence).
//   - Directories without their trailing slash redirect (301) to it; a
//     directory lists its children one a line, subdirectories with "/";
//     ?alt=json lists them as a JSON array; ?recursive=true dumps JSON
//     with camelCased schema names; &alt=text dumps "key value" lines
//     (docs: #aggcontents, #format_query_output).
//   - 200 answers carry an ETag; ?wait_for_change=true hangs until the
//     value's ETag differs from last_etag (or from the current one when no
//     last_etag is given), and answers the current value at timeout_sec
//     (docs: #waitforchange, #etags). A wait on a directory needs
//     recursive=true, else 400 (docs: "You can't perform a wait-for-change
//     request on a directory listing").
//   - Only guest attributes are written: PUT and DELETE under
//     instance/guest-attributes/NAMESPACE/KEY
//     (https://cloud.google.com/compute/docs/metadata/manage-guest-attributes);
//     any other method is 405.
//   - HEAD answers the headers GET would, Content-Length included
//     (RFC 9110 section 9.3.2). Range and conditional requests are not
//     documented either way; they are ignored unless Quirks turn them on.
func (s *Server) serveGCP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Metadata-Flavor", "Google")
	h.Set("Server", "Metadata Server for VM")
	h.Set("X-XSS-Protection", "0")
	h.Set("X-Frame-Options", "SAMEORIGIN")
	if forwarded(r) {
		gcpError(w, http.StatusForbidden, "Your client does not have permission to get URL <code>"+html.EscapeString(r.URL.Path)+"</code> from this server.")
		return
	}
	switch r.URL.Path {
	case "/":
		s.writeGCP(w, r, rendered{body: []byte("computeMetadata/\n"), ctype: "application/text", status: http.StatusOK})
		return
	case "/computeMetadata":
		http.Redirect(w, r, r.URL.Path+"/", http.StatusMovedPermanently)
		return
	}
	if !strings.HasPrefix(r.URL.Path, "/computeMetadata/") {
		gcpNotFound(w, r)
		return
	}
	if r.Header.Get("Metadata-Flavor") != "Google" {
		gcpError(w, http.StatusForbidden, "Your client does not have permission to get URL <code>"+html.EscapeString(r.URL.Path)+
			"</code> from this server. Missing Metadata-Flavor:Google header.")
		return
	}
	switch r.URL.Path {
	case gcpPrefix:
		http.Redirect(w, r, r.URL.Path+"/", http.StatusMovedPermanently)
		return
	case "/computeMetadata/":
		s.writeGCP(w, r, rendered{body: []byte("v1/\n"), ctype: "application/text", status: http.StatusOK})
		return
	}
	rel, ok := strings.CutPrefix(r.URL.Path, gcpPrefix+"/")
	if !ok {
		gcpNotFound(w, r)
		return
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		s.getGCP(w, r, rel)
	case http.MethodPut, http.MethodDelete:
		s.writeGuestAttribute(w, r, rel)
	default:
		gcpError(w, http.StatusMethodNotAllowed, "The request method <code>"+html.EscapeString(r.Method)+"</code> is inappropriate for the URL.")
	}
}

func (s *Server) writeGuestAttribute(w http.ResponseWriter, r *http.Request, rel string) {
	if !strings.HasPrefix(rel, "instance/guest-attributes/") {
		gcpError(w, http.StatusMethodNotAllowed, "The request method <code>"+html.EscapeString(r.Method)+"</code> is inappropriate for the URL.")
		return
	}
	var status int
	if r.Method == http.MethodDelete {
		status = s.gcp.remove(rel)
	} else {
		body, err := io.ReadAll(io.LimitReader(r.Body, gcpGuestAttributeMax+1))
		if err != nil || len(body) > gcpGuestAttributeMax {
			gcpError(w, http.StatusBadRequest, "Guest attribute value too large.")
			return
		}
		status = s.gcp.put(rel, string(body))
	}
	switch status {
	case http.StatusOK:
		w.WriteHeader(http.StatusOK)
	case http.StatusNotFound:
		gcpNotFound(w, r)
	default:
		gcpError(w, status, "Guest attributes are written as guest-attributes/NAMESPACE/KEY.")
	}
}

func (s *Server) getGCP(w http.ResponseWriter, r *http.Request, rel string) {
	q := r.URL.Query()
	wait := q.Get("wait_for_change") == "true"
	lastETag := q.Get("last_etag")
	timeout := gcpMaxTimeout
	if v := q.Get("timeout_sec"); v != "" {
		sec, err := strconv.Atoi(v)
		if err != nil || sec <= 0 {
			gcpError(w, http.StatusBadRequest, "Invalid timeout_sec.")
			return
		}
		timeout = min(time.Duration(sec)*time.Second, gcpMaxTimeout)
	}
	t := s.gcp
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		t.mu.Lock()
		ans := t.render(rel, q)
		changed := t.changed
		t.mu.Unlock()
		switch {
		case ans.redirect:
			http.Redirect(w, r, r.URL.Path+"/", http.StatusMovedPermanently)
			return
		case ans.status == http.StatusNotFound:
			gcpNotFound(w, r)
			return
		case wait && ans.isDir && q.Get("recursive") != "true":
			gcpError(w, http.StatusBadRequest, "Non-recursive wait_for_change on a directory is not supported.")
			return
		}
		etag := etagOf(ans.body)
		if !wait || ans.status != http.StatusOK || (lastETag != "" && lastETag != etag) {
			s.writeGCP(w, r, ans)
			return
		}
		if lastETag == "" {
			lastETag = etag
		}
		select {
		case <-changed:
		case <-deadline.C:
			s.writeGCP(w, r, ans)
			return
		case <-r.Context().Done():
			return
		}
	}
}

// writeGCP sends a rendered answer: with its ETag when it is a 200, and
// with Range and If-None-Match honoured only when the quirks say so.
func (s *Server) writeGCP(w http.ResponseWriter, r *http.Request, ans rendered) {
	h := w.Header()
	if ans.status != http.StatusOK {
		h.Set("Content-Type", ans.ctype)
		h.Set("Content-Length", strconv.Itoa(len(ans.body)))
		w.WriteHeader(ans.status)
		_, _ = w.Write(ans.body)
		return
	}
	// GCE's ETags are 16 hex digits, unquoted.
	etag := etagOf(ans.body)
	h.Set("ETag", etag)
	s.writeBody(w, r, ans.ctype, ans.body, etag)
}

func etagOf(body []byte) string {
	sum := sha256.Sum256(body)
	return hex.EncodeToString(sum[:8])
}

// gcpError answers with the HTML error page Google's front ends serve,
// which is what the metadata server's 4xx answers look like.
func gcpError(w http.ResponseWriter, code int, msg string) {
	page := fmt.Sprintf("<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n  <title>Error %d (%s)!!1</title>\n"+
		"  <p><b>%d.</b> <ins>That’s an error.</ins>\n  <p>%s  <ins>That’s all we know.</ins>\n",
		code, http.StatusText(code), code, msg)
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=UTF-8")
	h.Set("Content-Length", strconv.Itoa(len(page)))
	w.WriteHeader(code)
	_, _ = io.WriteString(w, page)
}

func gcpNotFound(w http.ResponseWriter, r *http.Request) {
	gcpError(w, http.StatusNotFound, "The requested URL <code>"+html.EscapeString(r.URL.Path)+"</code> was not found on this server.")
}
