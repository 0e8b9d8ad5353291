package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"
)

// upstreamTransport is an HTTP/1.1 client for the metadata endpoints that
// does its I/O on the calling goroutine.
//
// http.Transport runs two goroutines per connection (a write loop and a
// read loop) and hands every request and response across channels; on a
// two-core node that handoff, not the bytes, was most of the proxy's cost
// per request (BENCHMARKS.md). A metadata endpoint is one address that
// speaks plain HTTP/1.1 with small, length-delimited answers, so the
// handler goroutine can write the request and read the response itself
// over a pooled keep-alive connection.
//
// It never uses a proxy from the environment, never follows redirects
// (ReverseProxy relays them) and never adds headers: req.Write writes the
// request ReverseProxy built, no more.
type upstreamTransport struct {
	dialer      net.Dialer
	maxIdle     int           // per address
	idleTimeout time.Duration // an idle connection older than this is closed, not reused

	mu   sync.Mutex
	idle map[string][]*upConn // LIFO: the most recently used is the likeliest alive
}

type upConn struct {
	net.Conn
	br       *bufio.Reader
	bw       *bufio.Writer
	idleFrom time.Time
}

// NewPoolTransport is the hand-written pool as a Config.Transport, for the
// side-by-side measurement against net/http's Transport in make bench
// only; it goes with this file once that has decided.
func NewPoolTransport() http.RoundTripper { return newPoolTransport() }

func newPoolTransport() *upstreamTransport {
	return &upstreamTransport{
		dialer:      net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second},
		maxIdle:     256,
		idleTimeout: 30 * time.Second,
		idle:        map[string][]*upConn{},
	}
}

var errStaleConn = errors.New("pooled upstream connection was closed by the peer")

// RoundTrip sends req to req.URL.Host and returns the response with its
// body still on the wire. The connection goes back to the pool when the
// body has been read to the end and closed.
func (t *upstreamTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	retryable := req.Body == nil || req.Body == http.NoBody
	for attempt := 0; ; attempt++ {
		c, reused, err := t.conn(ctx, req.URL.Host)
		if err != nil {
			return nil, err
		}
		resp, err := t.exchange(ctx, c, req)
		if err == nil {
			return resp, nil
		}
		c.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		// A keep-alive connection the upstream closed while it sat in
		// the pool fails before any answer: try once more on a new one.
		if reused && retryable && attempt == 0 && errors.Is(err, errStaleConn) {
			continue
		}
		return nil, err
	}
}

func (t *upstreamTransport) exchange(ctx context.Context, c *upConn, req *http.Request) (*http.Response, error) {
	deadline, _ := ctx.Deadline()
	if err := c.SetDeadline(deadline); err != nil {
		return nil, err
	}
	// A client that goes away (or a timeout) must end a blocked read at
	// once, not when the upstream answers: that is what cancels a GCP
	// long poll.
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	if err := req.Write(c.bw); err != nil {
		stop()
		return nil, stale(err)
	}
	if err := c.bw.Flush(); err != nil {
		stop()
		return nil, stale(err)
	}
	resp, err := http.ReadResponse(c.br, req)
	if err != nil {
		stop()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, stale(err)
	}
	if resp.StatusCode < 200 {
		// The proxy never sends Expect, so an informational answer is a
		// confused upstream.
		resp.Body.Close()
		stop()
		return nil, fmt.Errorf("upstream sent informational status %d", resp.StatusCode)
	}
	resp.Body = &pooledBody{body: resp.Body, c: c, t: t, host: req.URL.Host, stop: stop, reuse: !resp.Close && !req.Close}
	return resp, nil
}

// stale marks errors that mean the connection was dead before the
// exchange started, so the request never reached the upstream. A deadline
// that expired is the request's timeout, reported as such (504, not 502).
func stale(err error) error {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("%w: %v", context.DeadlineExceeded, err)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return fmt.Errorf("%w: %v", errStaleConn, err)
	}
	return err
}

func (t *upstreamTransport) conn(ctx context.Context, addr string) (*upConn, bool, error) {
	now := time.Now()
	t.mu.Lock()
	for {
		list := t.idle[addr]
		if len(list) == 0 {
			break
		}
		c := list[len(list)-1]
		t.idle[addr] = list[:len(list)-1]
		if now.Sub(c.idleFrom) < t.idleTimeout {
			t.mu.Unlock()
			return c, true, nil
		}
		c.Close()
	}
	t.mu.Unlock()
	nc, err := t.dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, false, fmt.Errorf("dialing upstream %s: %w", addr, err)
	}
	return &upConn{Conn: nc, br: bufio.NewReaderSize(nc, 4096), bw: bufio.NewWriterSize(nc, 4096)}, false, nil
}

func (t *upstreamTransport) put(addr string, c *upConn) {
	if c.br.Buffered() > 0 {
		// Bytes after the response: the framing is not what we think.
		c.Close()
		return
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		c.Close()
		return
	}
	c.idleFrom = time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.idle[addr]) >= t.maxIdle {
		c.Close()
		return
	}
	t.idle[addr] = append(t.idle[addr], c)
}

// CloseIdleConnections closes every pooled connection.
func (t *upstreamTransport) CloseIdleConnections() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for addr, list := range t.idle {
		for _, c := range list {
			c.Close()
		}
		delete(t.idle, addr)
	}
}

// pooledBody returns its connection to the pool once the body was read to
// its end; a body closed early leaves the connection in an unknown state,
// so it is closed instead.
type pooledBody struct {
	body  io.ReadCloser
	c     *upConn
	t     *upstreamTransport
	host  string
	stop  func() bool
	reuse bool
	eof   bool
	done  bool
}

func (b *pooledBody) Read(p []byte) (int, error) {
	n, err := b.body.Read(p)
	if errors.Is(err, io.EOF) {
		b.eof = true
	}
	return n, err
}

func (b *pooledBody) Close() error {
	if b.done {
		return nil
	}
	b.done = true
	err := b.body.Close()
	// stop reports false when the cancellation already fired and poisoned
	// the deadline: such a connection is not reused.
	if b.stop() && b.eof && b.reuse && err == nil {
		b.t.put(b.host, b.c)
		return nil
	}
	b.c.Close()
	return err
}
