package proxy

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// limitListener bounds open connections in total and per source address,
// and records where each connection was originally bound for.
//
// Over a limit a new connection is never queued in Accept: a queue would
// let one pod holding a thousand idle connections delay every other pod's
// first request. Over its own share a source's new connection is closed at
// once. At the total, room is made by closing a connection that is idle
// (between requests) or has not finished sending a request, taken from
// the source holding the most connections, if it holds more than its fair
// share; only when no source does is the new connection refused. So one
// pod, or a few, cannot take the gate away from the rest, and a client
// whose idle keep-alive connection is closed simply opens a new one.
//
// A connection still sending its first request is not spared for being
// new: sources that close and reopen their connections faster than any
// grace period would otherwise keep the whole table fresh, and refuse
// every other pod (a slow-header flood kept a 33rd pod out for the whole
// second such a grace lasted).
type limitListener struct {
	net.Listener
	originalDst func(net.Conn) (netip.AddrPort, error)
	maxTotal    int
	maxPerSrc   int
	m           *connMetrics

	mu    sync.Mutex
	total int
	bySrc map[netip.Addr]map[*limitedConn]struct{}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		src := addrOf(c.RemoteAddr())
		lc := &limitedConn{Conn: c, l: l, src: src, since: time.Now()}
		admitted, victim, reason := l.acquire(lc)
		if victim != nil {
			l.m.connsEvicted.Inc()
			victim.Close()
		}
		if !admitted {
			l.m.connsRejected.WithLabelValues(reason).Inc()
			c.Close()
			continue
		}
		l.m.connsOpen.Inc()
		lc.dst, lc.dstErr = l.original(c)
		return lc, nil
	}
}

func (l *limitListener) original(c net.Conn) (netip.AddrPort, error) {
	if l.originalDst != nil {
		return l.originalDst(c)
	}
	// Without a redirect (tests, --iptables=false with a per-endpoint
	// listener) the connection is bound for where it arrived.
	return netip.ParseAddrPort(c.LocalAddr().String())
}

// acquire admits lc or says why not; victim, if set, is to be closed to
// make room.
func (l *limitListener) acquire(lc *limitedConn) (admitted bool, victim *limitedConn, reason string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.maxPerSrc > 0 && len(l.bySrc[lc.src]) >= l.maxPerSrc {
		return false, nil, "per_source"
	}
	if l.maxTotal > 0 && l.total >= l.maxTotal {
		victim = l.evictableLocked(lc.src)
		if victim == nil {
			return false, nil, "total"
		}
	}
	l.total++
	conns := l.bySrc[lc.src]
	if conns == nil {
		conns = map[*limitedConn]struct{}{}
		l.bySrc[lc.src] = conns
	}
	conns[lc] = struct{}{}
	return true, victim, ""
}

// evictableLocked finds a connection to close for a newcomer from src: one
// of the source holding the most connections, if that is more than its
// fair share of the total and more than src holds, that is idle or still
// sending its first request, the longest in that state. The fair share
// counts the newcomer's source among the sources: otherwise sources that
// filled the total with equal shares (8 pods with 32 connections each of
// 256) would each hold exactly their share, and every other pod would be
// refused.
func (l *limitListener) evictableLocked(src netip.Addr) *limitedConn {
	var heaviest netip.Addr
	most := 0
	for s, conns := range l.bySrc {
		if len(conns) > most {
			heaviest, most = s, len(conns)
		}
	}
	sources := len(l.bySrc)
	if _, ok := l.bySrc[src]; !ok {
		sources++
	}
	fair := l.maxTotal / sources
	if most <= fair || most <= len(l.bySrc[src])+1 {
		return nil
	}
	// The oldest idle connection first: its client retries on a new
	// connection. A new one may hold a whole first request not yet read,
	// which closing it loses; it goes only when the source has no idle
	// one (a slow-header flood's are all new).
	var oldest *limitedConn
	for c := range l.bySrc[heaviest] {
		if !c.evictable() {
			continue
		}
		if oldest == nil || c.idle() && !oldest.idle() || c.idle() == oldest.idle() && c.since.Before(oldest.since) {
			oldest = c
		}
	}
	if oldest != nil {
		oldest.evicted.Store(true)
	}
	return oldest
}

func (l *limitListener) release(lc *limitedConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	conns := l.bySrc[lc.src]
	delete(conns, lc)
	if len(conns) == 0 {
		delete(l.bySrc, lc.src)
	}
}

type limitedConn struct {
	net.Conn
	l      *limitListener
	src    netip.Addr
	dst    netip.AddrPort
	dstErr error
	since  time.Time // accepted, or last became idle
	// state is the http.ConnState net/http last reported, as int32.
	state   atomic.Int32
	evicted atomic.Bool
	once    sync.Once
}

// evictable reports whether c is between requests or has not finished
// its first: closing it loses no request the proxy is serving. net/http
// reports a connection active only once a request's headers are read, so
// a slow header block is evictable too (on a kept-alive connection it is
// read while the connection is idle).
func (c *limitedConn) evictable() bool {
	if c.evicted.Load() {
		return false
	}
	st := http.ConnState(c.state.Load())
	return st == http.StateIdle || st == http.StateNew
}

func (c *limitedConn) idle() bool { return http.ConnState(c.state.Load()) == http.StateIdle }

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.release(c)
		c.l.m.connsOpen.Dec()
	})
	return err
}

// trackConnState records what net/http says each connection is doing, so
// that only idle or silent connections are ever closed to make room.
func trackConnState(c net.Conn, st http.ConnState) {
	if lc, ok := c.(*limitedConn); ok {
		lc.state.Store(int32(st))
		if st == http.StateIdle {
			lc.l.mu.Lock()
			lc.since = time.Now()
			lc.l.mu.Unlock()
		}
	}
}

func addrOf(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(ta.IP)
		return ip.Unmap()
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

type connKey struct{}

// connInfo is what the proxy knows about a connection before reading a
// request on it.
type connInfo struct {
	dst    netip.AddrPort
	dstErr error
}

// connContext stores the connection's original destination in the
// context of every request served on it.
func connContext(ctx context.Context, c net.Conn) context.Context {
	lc, ok := c.(*limitedConn)
	if !ok {
		return ctx
	}
	return context.WithValue(ctx, connKey{}, connInfo{dst: lc.dst, dstErr: lc.dstErr})
}
