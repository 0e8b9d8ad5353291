package redirect

import (
	"net"
	"strings"
	"testing"
)

// The redirected case, where conntrack knows the original destination, is
// covered by TestKernel in network namespaces; these cover the refusals.
func TestOriginalDstRefuses(t *testing.T) {
	t.Run("a connection without a socket is refused", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		if _, err := OriginalDst(a); err == nil || !strings.Contains(err.Error(), "no socket") {
			t.Fatalf("got %v, want a no-socket error", err)
		}
	})
	t.Run("a UDP socket is refused", func(t *testing.T) {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conn, err := net.DialUDP("udp", nil, c.LocalAddr().(*net.UDPAddr))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := OriginalDst(conn); err == nil || !strings.Contains(err.Error(), "not a TCP connection") {
			t.Fatalf("got %v, want a not-TCP error", err)
		}
	})
}
