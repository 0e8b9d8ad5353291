package fakecloud

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Flavor selects which cloud's metadata API a Server imitates.
type Flavor string

// The flavors a Server can serve.
const (
	GCP   Flavor = "gcp"
	Azure Flavor = "azure"
)

// Record is one request as the upstream received it. Path and RawQuery are
// taken from the request line byte for byte, not from the decoded URL, so a
// test sees exactly what a proxy forwarded.
type Record struct {
	Time       time.Time   `json:"time"`
	Method     string      `json:"method"`
	Path       string      `json:"path"`
	RawQuery   string      `json:"raw_query"`
	Host       string      `json:"host"`
	Header     http.Header `json:"header"`
	RemoteAddr string      `json:"remote_addr"`
	// Status is 0 while the request is still being served (a long-poll).
	Status int `json:"status"`
}

// Quirks are behaviours that the real service is not documented to have
// but a plausible upstream might: a test turns them on to play a hostile
// or unusual upstream. All are off by default.
type Quirks struct {
	// HonourRange answers a request with a Range header 206 Partial
	// Content with the bytes asked for (net/http's ServeContent), as most
	// HTTP servers do. Whether GCE or Azure IMDS honour Range is not
	// documented; a proxy that strips listings must not depend on it.
	HonourRange bool `json:"honour_range"`
	// HonourIfNoneMatch answers 304 Not Modified, without a body, when
	// If-None-Match is the current ETag (GCP only: Azure sends no ETag).
	HonourIfNoneMatch bool `json:"honour_if_none_match"`
	// DNSSilent makes the GCP DNS listener read queries and answer none,
	// as an unreachable resolver would: the library's DNS probe then waits
	// out its timeout and the HTTP probe alone decides OnGCE.
	DNSSilent bool `json:"dns_silent"`
}

// Fault makes the next Count requests for Path (the request path, without
// query) answer Status with the flavor's error shape, before any other
// check: a throttled (429), failing (500) or updating (404, 410) service.
type Fault struct {
	Path   string `json:"path"`
	Status int    `json:"status"`
	Count  int    `json:"count"`
	// RetryAfter, when set, is sent as the Retry-After header.
	RetryAfter string `json:"retry_after,omitempty"`
}

// Server is one fake metadata server with its request log.
type Server struct {
	flavor Flavor
	gcp    *gcpTree

	mu      sync.Mutex
	records []Record
	quirks  Quirks
	faults  []Fault
}

// New returns a server of the given flavor.
func New(f Flavor) (*Server, error) {
	s := &Server{flavor: f}
	switch f {
	case GCP:
		s.gcp = newGCPTree()
	case Azure:
	default:
		return nil, fmt.Errorf("unknown flavor %q (want %q or %q)", f, GCP, Azure)
	}
	return s, nil
}

// Handler serves the metadata API and records every request, rejected ones
// included.
func (s *Server) Handler() http.Handler {
	var h http.Handler
	if s.flavor == GCP {
		h = http.HandlerFunc(s.serveGCP)
	} else {
		h = http.HandlerFunc(s.serveAzure)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := s.record(r)
		sw := &statusWriter{ResponseWriter: w}
		if f, ok := s.takeFault(r.URL.Path); ok {
			s.serveFault(sw, f)
		} else {
			h.ServeHTTP(sw, r)
		}
		s.mu.Lock()
		if i < len(s.records) {
			s.records[i].Status = sw.statusCode()
		}
		s.mu.Unlock()
	})
}

func (s *Server) record(r *http.Request) int {
	path, query, _ := strings.Cut(r.RequestURI, "?")
	rec := Record{
		Time:       time.Now().UTC(),
		Method:     r.Method,
		Path:       path,
		RawQuery:   query,
		Host:       r.Host,
		Header:     r.Header.Clone(),
		RemoteAddr: r.RemoteAddr,
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.records = append(s.records, rec)
	return len(s.records) - 1
}

// Records returns a copy of the requests received since the last Reset.
func (s *Server) Records() []Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Record, len(s.records))
	copy(out, s.records)
	return out
}

// Reset forgets the recorded requests.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.records = nil
}

// SetQuirks replaces the server's quirks.
func (s *Server) SetQuirks(q Quirks) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.quirks = q
}

// Quirks returns the quirks in force.
func (s *Server) Quirks() Quirks {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.quirks
}

// AddFault queues a fault; faults for the same path are used in order.
func (s *Server) AddFault(f Fault) error {
	if f.Path == "" || f.Count <= 0 || f.Status < 400 || f.Status > 599 {
		return fmt.Errorf("a fault needs a path, a count > 0 and a 4xx or 5xx status: %+v", f)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, f)
	return nil
}

// ClearFaults drops every queued fault.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = nil
}

func (s *Server) takeFault(path string) (Fault, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.faults {
		if s.faults[i].Path == path {
			f := s.faults[i]
			if s.faults[i].Count--; s.faults[i].Count == 0 {
				s.faults = append(s.faults[:i], s.faults[i+1:]...)
			}
			return f, true
		}
	}
	return Fault{}, false
}

// serveFault answers an injected fault the way the flavor answers errors.
func (s *Server) serveFault(w http.ResponseWriter, f Fault) {
	if f.RetryAfter != "" {
		w.Header().Set("Retry-After", f.RetryAfter)
	}
	if s.flavor == GCP {
		w.Header().Set("Metadata-Flavor", "Google")
		w.Header().Set("Server", "Metadata Server for VM")
		gcpError(w, f.Status, http.StatusText(f.Status)+".")
		return
	}
	w.Header().Set("Server", azureServer)
	azureError(w, f.Status, map[string]any{
		"error": strings.ToLower(strings.ReplaceAll(http.StatusText(f.Status), " ", "_")), "error_description": http.StatusText(f.Status),
	})
}

// writeBody sends a 200 body, or what the quirks make of it: 304 for a
// matching If-None-Match, 206 for a Range.
func (s *Server) writeBody(w http.ResponseWriter, r *http.Request, ctype string, body []byte, etag string) {
	q := s.Quirks()
	h := w.Header()
	h.Set("Content-Type", ctype)
	if q.HonourIfNoneMatch && etag != "" && r.Header.Get("If-None-Match") == etag {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	if q.HonourRange && r.Header.Get("Range") != "" {
		// ServeContent also answers HEAD and sets Accept-Ranges. Its
		// validators expect quoted ETags, so with GCE's unquoted ones
		// If-Range never matches and the whole body is sent.
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(body))
		return
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

// SetValue changes a GCP leaf value (a full path such as
// /computeMetadata/v1/instance/attributes/cluster-name) and wakes the
// long-polls waiting for it.
func (s *Server) SetValue(path, value string) error {
	if s.gcp == nil {
		return fmt.Errorf("values can only be changed on a %s server", GCP)
	}
	return s.gcp.set(path, value)
}

// ControlHandler serves the test-facing API; it must only be reachable by
// the harness (the sandbox binds it to the cloud namespace's loopback):
//
//	GET    /healthz           200 once serving
//	GET    /records           JSON array of Record
//	DELETE /records           forget recorded requests
//	PUT    /value?path=P      body is the new value of GCP leaf P
//	PUT    /quirks            body is a JSON Quirks, replacing the current
//	POST   /faults            body is a JSON Fault, queued
//	DELETE /faults            drop every queued fault
func (s *Server) ControlHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /records", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s.Records())
	})
	mux.HandleFunc("DELETE /records", func(w http.ResponseWriter, _ *http.Request) {
		s.Reset()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("PUT /value", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if err := s.SetValue(r.URL.Query().Get("path"), string(body)); err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("PUT /quirks", func(w http.ResponseWriter, r *http.Request) {
		var q Quirks
		if err := decodeStrict(r.Body, &q); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		s.SetQuirks(q)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /faults", func(w http.ResponseWriter, r *http.Request) {
		var f Fault
		if err := decodeStrict(r.Body, &f); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if err := s.AddFault(f); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("DELETE /faults", func(w http.ResponseWriter, _ *http.Request) {
		s.ClearFaults()
		w.WriteHeader(http.StatusNoContent)
	})
	return mux
}

// decodeStrict decodes one JSON value and refuses unknown fields, so a
// misspelt quirk fails the test that set it instead of doing nothing.
func decodeStrict(r io.Reader, v any) error {
	dec := json.NewDecoder(io.LimitReader(r, 1<<16))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// statusWriter remembers the status code and keeps Flush working, which
// the GCP long-poll needs.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) statusCode() int {
	if w.code == 0 {
		return http.StatusOK
	}
	return w.code
}

// forwarded reports whether a request went through a proxy that announced
// itself. GCE and Azure refuse such requests so that an SSRF through a
// workload's own HTTP proxy cannot reach credentials (Azure: "Requests
// containing the X-Forwarded-For header are rejected",
// https://learn.microsoft.com/azure/virtual-machines/instance-metadata-service).
func forwarded(r *http.Request) bool {
	return r.Header.Get("X-Forwarded-For") != ""
}
