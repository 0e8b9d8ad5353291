package redirect

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strconv"
)

// conntrackFlusher forgets tracked TCP connections that go straight to an
// endpoint. NAT is decided once per connection, on its first packet: a
// keep-alive connection a pod opened before the DNAT rule existed keeps its
// un-NATed conntrack entry and would keep reaching the IMDS directly. Once
// the entry is gone, the connection's next packet is NATed to the proxy,
// which resets it, and the client reconnects through the proxy.
//
// Only entries whose reply comes from the endpoint itself go: a connection
// already redirected to the proxy (its reply source is the proxy) must keep
// its entry. Without it the proxy's answers leave un-NATed and the pod
// resets them, and a connection accepted just before the flush loses its
// original destination; every rule repair would cut every pod's open
// connection to metaguard.
type conntrackFlusher interface {
	Flush(ctx context.Context, dst netip.AddrPort) error
}

// errNoConntrack is returned when the conntrack binary is not installed.
var errNoConntrack = errors.New("conntrack binary not found")

// execConntrack runs conntrack-tools' conntrack binary; the kernel's netlink
// interface for this is not worth a dependency for one delete per change.
type execConntrack struct{ path string }

func (c execConntrack) Flush(ctx context.Context, dst netip.AddrPort) error {
	addr, port := dst.Addr().String(), strconv.Itoa(int(dst.Port()))
	args := []string{"-D", "-p", "tcp", "--orig-dst", addr, "--orig-port-dst", port, "--reply-src", addr, "--reply-port-src", port}
	if dst.Addr().Is6() {
		args = append([]string{"-f", "ipv6"}, args...)
	}
	cmd := exec.CommandContext(ctx, c.path, args...)
	out, err := cmd.CombinedOutput()
	if errors.Is(err, exec.ErrNotFound) {
		return fmt.Errorf("%w: %w", errNoConntrack, err)
	}
	var exitErr *exec.ExitError
	// conntrack exits 1 when nothing matched: that is the common, good case.
	if errors.As(err, &exitErr) && exitErr.ExitCode() == 1 && bytes.Contains(out, []byte(" 0 flow entries have been deleted")) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("running conntrack %v: %w: %s", args, err, bytes.TrimSpace(out))
	}
	return nil
}
