package proxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// connCounter is an upstream that counts the TCP connections it accepted.
type connCounter struct {
	*httptest.Server
	mu    sync.Mutex
	conns int
}

func newConnCounter(t *testing.T, h http.HandlerFunc) *connCounter {
	cc := &connCounter{}
	cc.Server = httptest.NewUnstartedServer(h)
	cc.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			cc.mu.Lock()
			cc.conns++
			cc.mu.Unlock()
		}
	}
	cc.Start()
	t.Cleanup(cc.Close)
	return cc
}

func (c *connCounter) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conns
}

func roundTrip(t *testing.T, tr *upstreamTransport, method, url string, readAll bool) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	var body []byte
	if readAll {
		body, _ = io.ReadAll(resp.Body)
	}
	resp.Body.Close()
	return resp, string(body)
}

func TestUpstreamTransportReusesOneConnection(t *testing.T) {
	up := newConnCounter(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok "+r.Method) })
	tr := newPoolTransport()
	defer tr.CloseIdleConnections()
	for i := 0; i < 20; i++ {
		m := []string{"GET", "HEAD", "PUT"}[i%3]
		resp, body := roundTrip(t, tr, m, up.URL+"/x", true)
		want := "ok " + m
		if m == "HEAD" {
			want = ""
		}
		if resp.StatusCode != 200 || body != want {
			t.Fatalf("%s: %d %q", m, resp.StatusCode, body)
		}
	}
	if n := up.count(); n != 1 {
		t.Fatalf("20 sequential requests used %d connections, want 1", n)
	}
}

func TestUpstreamTransportRetriesAConnectionClosedWhileIdle(t *testing.T) {
	up := newConnCounter(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	tr := newPoolTransport()
	defer tr.CloseIdleConnections()
	roundTrip(t, tr, "GET", up.URL+"/", true)
	up.CloseClientConnections() // the upstream drops the idle keep-alive
	time.Sleep(10 * time.Millisecond)
	if resp, body := roundTrip(t, tr, "GET", up.URL+"/", true); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("after the upstream closed the idle connection: %d %q", resp.StatusCode, body)
	}
	if n := up.count(); n != 2 {
		t.Fatalf("%d connections, want 2 (the stale one replaced once)", n)
	}
}

func TestUpstreamTransportNeverReusesAConnectionInAnUnknownState(t *testing.T) {
	tests := []struct {
		name    string
		handler http.HandlerFunc
		readAll bool
	}{
		{"a body closed before its end", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, strings.Repeat("x", 100000)) }, false},
		{"Connection: close from the upstream", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Connection", "close")
			io.WriteString(w, "bye")
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := newConnCounter(t, tt.handler)
			tr := newPoolTransport()
			defer tr.CloseIdleConnections()
			roundTrip(t, tr, "GET", up.URL+"/", tt.readAll)
			roundTrip(t, tr, "GET", up.URL+"/", tt.readAll)
			if n := up.count(); n != 2 {
				t.Fatalf("%d connections for 2 requests, want 2", n)
			}
		})
	}
}

func TestUpstreamTransportCancelsABlockedReadWhenTheContextEnds(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	up := newConnCounter(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	tr := newPoolTransport()
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", up.URL+"/", nil)
	done := make(chan error, 1)
	go func() {
		_, err := tr.RoundTrip(req)
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("RoundTrip succeeded after its context was cancelled")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("RoundTrip still blocked 5s after its context was cancelled")
	}
}
