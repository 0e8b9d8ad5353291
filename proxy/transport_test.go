package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// rawUpstream is a metadata service the test writes byte by byte: it can
// answer without reading a body, or send bytes nobody asked for. serve
// runs once per accepted connection.
type rawUpstream struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns int
	open  []net.Conn
}

func newRawUpstream(t *testing.T, serve func(c net.Conn, br *bufio.Reader)) *rawUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &rawUpstream{ln: ln}
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.mu.Lock()
			u.conns++
			u.open = append(u.open, c)
			u.mu.Unlock()
			u.wg.Add(1)
			go func() {
				defer u.wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				serve(c, bufio.NewReader(c))
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		u.mu.Lock()
		for _, c := range u.open {
			c.Close()
		}
		u.mu.Unlock()
		u.wg.Wait()
	})
	return u
}

func (u *rawUpstream) addr() string { return u.ln.Addr().String() }

func (u *rawUpstream) accepted() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.conns
}

func reply(w io.Writer, body string) {
	io.WriteString(w, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "+itoa(len(body))+"\r\n\r\n"+body)
}

// TestABodyNeverReachesASharedUpstreamConnection: an upstream that
// answers a PUT without reading its body then takes the body for the next
// request and answers it too, slowly: its answer comes only once the
// connection's next request has arrived, as a pipelined answer would. If
// the proxy reused the connection, that answer would be the next pod's.
func TestABodyNeverReachesASharedUpstreamConnection(t *testing.T) {
	up := newRawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		smuggled := false
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			switch {
			case req.Method == "PUT":
				reply(c, "put-ok") // the body is left unread on purpose
			case strings.Contains(req.URL.Path, "security-credentials"):
				smuggled = true // answered after the next request arrives
			default:
				if smuggled {
					reply(c, "SMUGGLED-CREDENTIALS")
					smuggled = false
				}
				reply(c, "i-0123")
			}
		}
	})
	h := newHarnessAt(t, "generic", "", up.addr())
	smuggled := "GET /latest/meta-data/iam/security-credentials/role HTTP/1.1\r\nHost: x\r\n\r\n"
	for range 3 {
		req, err := http.NewRequest("PUT", "http://169.254.169.254/echo/x", strings.NewReader(smuggled))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := h.client(plainPod).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "put-ok" {
			t.Fatalf("PUT answered %q", b)
		}
		if resp, body := h.do(otherPod, "GET", "/latest/meta-data/instance-id", nil); resp.StatusCode != 200 || body != "i-0123" {
			t.Fatalf("the next pod got %d %q: an answer to a request hidden in another pod's body", resp.StatusCode, body)
		}
	}
}

// TestBytesNobodyAskedForCloseAnIdleUpstreamConnection: an upstream that
// sends a response on an idle keep-alive connection must not have it read
// as the answer to the next request.
func TestBytesNobodyAskedForCloseAnIdleUpstreamConnection(t *testing.T) {
	closed := make(chan struct{}, 1)
	up := newRawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.Copy(io.Discard, req.Body)
		reply(c, "i-0123")
		if up := c.RemoteAddr(); up == nil {
			return
		}
		reply(c, "SMUGGLED") // unsolicited, on the now idle connection
		// The proxy must hang up on us; wait for it.
		if _, err := br.ReadByte(); err != nil {
			closed <- struct{}{}
		}
	})
	h := newHarnessAt(t, "aws", "", up.addr())
	if resp, body := h.do(plainPod, "GET", "/latest/meta-data/instance-id", nil); resp.StatusCode != 200 || body != "i-0123" {
		t.Fatalf("first request: %d %q", resp.StatusCode, body)
	}
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("the proxy kept an upstream connection that sent unsolicited bytes")
	}
	if resp, body := h.do(otherPod, "GET", "/latest/meta-data/instance-id", nil); resp.StatusCode != 200 || body != "i-0123" {
		t.Fatalf("second request got %d %q", resp.StatusCode, body)
	}
	if n := up.accepted(); n != 2 {
		t.Errorf("%d upstream connections, want a new one after the first was closed", n)
	}
}

func TestBodiesAreRefusedWhereTheAPIDefinesNone(t *testing.T) {
	tests := []struct {
		flavor, method, target string
		want                   int
	}{
		{"aws", "PUT", "/latest/api/token", 400},
		{"aws", "PUT", "/latest/meta-data/instance-id", 405},
		{"azure", "GET", "/metadata/instance", 400},
		{"gcp", "GET", "/computeMetadata/v1/instance/id", 400},
		{"gcp", "PUT", "/computeMetadata/v1/project/attributes/ssh-keys", 405},
	}
	for _, tt := range tests {
		t.Run(tt.flavor+" "+tt.method+" "+tt.target, func(t *testing.T) {
			h := newHarness(t, tt.flavor, ok("x"))
			req, err := http.NewRequest(tt.method, "http://169.254.169.254"+tt.target, strings.NewReader("GET /smuggled HTTP/1.1\r\n\r\n"))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := h.client(accessorPod).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want || len(h.up.received()) != 0 {
				t.Fatalf("status %d (upstream saw %d requests), want %d and nothing forwarded", resp.StatusCode, len(h.up.received()), tt.want)
			}
		})
	}
}
