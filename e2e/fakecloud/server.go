package fakecloud

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
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

// Server is one fake metadata server with its request log.
type Server struct {
	flavor Flavor
	gcp    *gcpTree

	mu      sync.Mutex
	records []Record
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
		h = http.HandlerFunc(serveAzure)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := s.record(r)
		sw := &statusWriter{ResponseWriter: w}
		h.ServeHTTP(sw, r)
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
	return mux
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
// workload's own HTTP proxy cannot reach credentials.
func forwarded(r *http.Request) bool {
	return r.Header.Get("X-Forwarded-For") != ""
}
