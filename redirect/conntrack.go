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

// conntrackFlusher forgets tracked TCP connections to an endpoint. NAT is
// decided once per connection, on its first packet: a keep-alive connection a
// pod opened before the DNAT rule existed keeps its un-NATed conntrack entry
// and would keep reaching the IMDS directly. Once the entry is gone, the
// connection's next packet is NATed to the proxy, which resets it, and the
// client reconnects through the proxy.
type conntrackFlusher interface {
	Flush(ctx context.Context, dst netip.AddrPort) error
}

// errNoConntrack is returned when the conntrack binary is not installed.
var errNoConntrack = errors.New("conntrack binary not found")

// execConntrack runs conntrack-tools' conntrack binary; the kernel's netlink
// interface for this is not worth a dependency for one delete per change.
type execConntrack struct{ path string }

func (c execConntrack) Flush(ctx context.Context, dst netip.AddrPort) error {
	args := []string{"-D", "-p", "tcp", "--orig-dst", dst.Addr().String(), "--orig-port-dst", strconv.Itoa(int(dst.Port()))}
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
