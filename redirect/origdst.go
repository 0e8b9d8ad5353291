package redirect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// ip6tSoOriginalDst is IP6T_SO_ORIGINAL_DST from
// linux/netfilter_ipv6/ip6_tables.h, which x/sys/unix does not define.
const ip6tSoOriginalDst = 80

// OriginalDst returns the address a redirected connection was bound for
// before the DNAT rule sent it to the proxy, read from conntrack through
// SO_ORIGINAL_DST (IPv4) or IP6T_SO_ORIGINAL_DST (IPv6) on the accepted
// socket. c must be a TCP connection (or anything exposing SyscallConn, as
// *net.TCPConn does). A connection that was not NATed reports its own local
// address, so callers must check the result against the endpoints they serve
// rather than trust it as a destination. It keeps no state.
func OriginalDst(c net.Conn) (netip.AddrPort, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("original destination: %T has no socket", c)
	}
	local, ok := c.LocalAddr().(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("original destination: %T is not a TCP connection", c)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	// An IPv4 client accepted on a dual-stack [::] listener has a v4-mapped
	// local address; its conntrack entry is IPv4, so it is asked with SOL_IP.
	v4 := local.AddrPort().Addr().Unmap().Is4()
	var dst netip.AddrPort
	var sockErr error
	err = raw.Control(func(fd uintptr) {
		if v4 {
			dst, sockErr = originalDst4(int(fd))
		} else {
			dst, sockErr = originalDst6(int(fd))
		}
	})
	if err == nil {
		err = sockErr
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination of %s: %w", c.RemoteAddr(), err)
	}
	return dst, nil
}

func originalDst4(fd int) (netip.AddrPort, error) {
	// The kernel writes a 16-byte sockaddr_in; IPv6Mreq is the 20-byte
	// buffer x/sys/unix offers for it.
	m, err := unix.GetsockoptIPv6Mreq(fd, unix.SOL_IP, unix.SO_ORIGINAL_DST)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("getsockopt SO_ORIGINAL_DST: %w", err)
	}
	b := m.Multiaddr[:]
	if fam := binary.NativeEndian.Uint16(b[0:2]); fam != unix.AF_INET {
		return netip.AddrPort{}, fmt.Errorf("getsockopt SO_ORIGINAL_DST: address family %d", fam)
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), binary.BigEndian.Uint16(b[2:4])), nil
}

func originalDst6(fd int) (netip.AddrPort, error) {
	// The kernel writes a 28-byte sockaddr_in6; IPv6MTUInfo starts with one.
	info, err := unix.GetsockoptIPv6MTUInfo(fd, unix.SOL_IPV6, ip6tSoOriginalDst)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("getsockopt IP6T_SO_ORIGINAL_DST: %w", err)
	}
	sa := info.Addr
	if sa.Family != unix.AF_INET6 {
		return netip.AddrPort{}, errors.New("getsockopt IP6T_SO_ORIGINAL_DST: not an IPv6 address")
	}
	// sin6_port is in network byte order in memory.
	port := binary.BigEndian.Uint16(binary.NativeEndian.AppendUint16(nil, sa.Port))
	return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), port), nil
}
