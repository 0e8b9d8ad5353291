package redirect

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

// conntrackPeers finds a connection's peer with one ctnetlink GET of its
// original tuple. The socket is opened on first use and reopened after an
// error; lookups are serialised on it, which costs nothing next to the
// connect they follow (upstream connections are pooled).
type conntrackPeers struct {
	netns int // a namespace's file descriptor; 0 is the calling thread's

	mu sync.Mutex
	c  *conntrack.Conn
}

func (p *conntrackPeers) peer(orig tuple) (netip.AddrPort, bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.c == nil {
		c, err := conntrack.Dial(&netlink.Config{NetNS: p.netns})
		if err != nil {
			return netip.AddrPort{}, false, fmt.Errorf("opening conntrack: %w", err)
		}
		p.c = c
	}
	f, err := p.c.Get(conntrack.Flow{TupleOrig: conntrack.Tuple{
		IP:    conntrack.IPTuple{SourceAddress: orig.src.Addr(), DestinationAddress: orig.dst.Addr()},
		Proto: conntrack.ProtoTuple{Protocol: unix.IPPROTO_TCP, SourcePort: orig.src.Port(), DestinationPort: orig.dst.Port()},
	}})
	if errors.Is(err, unix.ENOENT) {
		return netip.AddrPort{}, false, nil
	}
	if err != nil {
		p.c.Close()
		p.c = nil
		return netip.AddrPort{}, false, fmt.Errorf("conntrack lookup: %w", err)
	}
	return peerOf(orig, f)
}

// peerOf is where the connection's packets really go, given the entry
// conntrack found for its tuple. The lookup matches either direction: an
// entry made by our own first packet has our tuple as its original, and
// the peer is its reply's source; an entry made by a packet towards us
// (our packets were untracked, the peer's reply was not) has our tuple as
// its reply, and the peer is its original's source.
func peerOf(orig tuple, f conntrack.Flow) (netip.AddrPort, bool, error) {
	o, r := flowTuple(f.TupleOrig), flowTuple(f.TupleReply)
	switch {
	case o == orig:
		return r.src, true, nil
	case r == orig:
		return o.src, true, nil
	}
	return netip.AddrPort{}, false, fmt.Errorf("conntrack returned %v / %v for %v", o, r, orig)
}

func flowTuple(t conntrack.Tuple) tuple {
	return tuple{
		src: unmapped(netip.AddrPortFrom(t.IP.SourceAddress, t.Proto.SourcePort)),
		dst: unmapped(netip.AddrPortFrom(t.IP.DestinationAddress, t.Proto.DestinationPort)),
	}
}

func (p *conntrackPeers) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.c == nil {
		return nil
	}
	err := p.c.Close()
	p.c = nil
	return err
}
