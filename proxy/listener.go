package proxy

import (
	"context"
	"net"
	"net/netip"
	"sync"
)

// limitListener bounds open connections in total and per source address,
// and records where each connection was originally bound for.
//
// Over a limit the new connection is closed at once instead of waiting in
// Accept: a queue would let one pod holding a thousand idle connections
// delay every other pod's first request, which is exactly the starvation
// the per-source limit exists to prevent.
type limitListener struct {
	net.Listener
	originalDst func(net.Conn) (netip.AddrPort, error)
	maxTotal    int
	maxPerSrc   int
	m           *metrics

	mu    sync.Mutex
	total int
	bySrc map[netip.Addr]int
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		src := addrOf(c.RemoteAddr())
		if reason := l.acquire(src); reason != "" {
			l.m.connsRejected.WithLabelValues(reason).Inc()
			c.Close()
			continue
		}
		l.m.connsOpen.Inc()
		lc := &limitedConn{Conn: c, l: l, src: src}
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

func (l *limitListener) acquire(src netip.Addr) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.maxTotal > 0 && l.total >= l.maxTotal {
		return "total"
	}
	if l.maxPerSrc > 0 && l.bySrc[src] >= l.maxPerSrc {
		return "per_source"
	}
	l.total++
	l.bySrc[src]++
	return ""
}

func (l *limitListener) release(src netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if n := l.bySrc[src] - 1; n > 0 {
		l.bySrc[src] = n
	} else {
		delete(l.bySrc, src)
	}
}

type limitedConn struct {
	net.Conn
	l      *limitListener
	src    netip.Addr
	dst    netip.AddrPort
	dstErr error
	once   sync.Once
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.release(c.src)
		c.l.m.connsOpen.Dec()
	})
	return err
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
