package redirect

import (
	"bufio"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// Servers and clients for the kernel tests: plain Go sockets created inside
// the test's namespaces.

// accepted is what the proxy stand-in learned about one connection.
type accepted struct {
	remote netip.AddrPort
	orig   netip.AddrPort
	err    error
}

type servers struct {
	proxy chan accepted
	imds  chan string            // lines the IMDS received after its greeting
	udp   map[string]chan string // datagrams the IMDS received, by port (":53")
}

// imdsTCPPorts and imdsUDPPorts are where the IMDS stand-in listens: the
// endpoints' ports, another port, and the DNS and NTP ports clouds serve on
// their metadata addresses.
var (
	imdsTCPPorts = []string{":53", ":80", ":81", ":32000"}
	imdsUDPPorts = []string{":53", ":80", ":123"}
)

// startServers runs the proxy stand-in in the node namespace (dual-stack
// [::]:8181, as the real proxy's ":8181") and the IMDS stand-in in the imds
// namespace. Each greets with its name, so a client knows where it landed.
func (topo *topology) startServers(t *testing.T) *servers {
	s := &servers{proxy: make(chan accepted, 16), imds: make(chan string, 16), udp: map[string]chan string{}}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []io.Closer
	)
	track := func(c io.Closer) {
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
	}
	t.Cleanup(func() {
		// Connections an endpoint rule cut off never see a FIN: close
		// every socket so each handler returns, then wait for them.
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	serve := func(l net.Listener, handle func(net.Conn)) {
		track(l)
		wg.Go(func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				track(c)
				wg.Go(func() {
					defer c.Close()
					handle(c)
				})
			}
		})
	}
	serve(listenIn(t, topo.node, "tcp", ":8181"), func(c net.Conn) {
		orig, err := OriginalDst(c)
		s.proxy <- accepted{remote: c.RemoteAddr().(*net.TCPAddr).AddrPort(), orig: orig, err: err}
		c.Write([]byte("proxy\n"))
	})
	for _, port := range imdsTCPPorts {
		serve(listenIn(t, topo.imds, "tcp", port), func(c net.Conn) {
			c.Write([]byte("imds\n"))
			sc := bufio.NewScanner(c)
			for sc.Scan() {
				s.imds <- sc.Text()
			}
		})
	}
	for _, port := range imdsUDPPorts {
		udp := listenPacketIn(t, topo.imds, "udp", port)
		track(udp)
		ch := make(chan string, 16)
		s.udp[port] = ch
		wg.Go(func() {
			buf := make([]byte, 64)
			for {
				n, _, err := udp.ReadFrom(buf)
				if err != nil {
					return
				}
				ch <- string(buf[:n])
			}
		})
	}
	return s
}

// expectUDP sends a datagram from ns to addr and checks that the IMDS
// listener on port received it.
func (s *servers) expectUDP(t *testing.T, ns, addr, port, payload string) {
	t.Helper()
	sendUDP(t, ns, addr, payload)
	select {
	case got := <-s.udp[port]:
		if got != payload {
			t.Fatalf("IMDS got UDP %q on %s, want %q", got, port, payload)
		}
	case <-time.After(2 * time.Second):
		t.Fatalf("UDP %q from %s to %s never reached the IMDS", payload, ns, addr)
	}
}

// expectUDPDropped sends a datagram from ns to addr and checks that the
// IMDS listener on port received nothing.
func (s *servers) expectUDPDropped(t *testing.T, ns, addr, port string) {
	t.Helper()
	sendUDP(t, ns, addr, "dropped?")
	select {
	case got := <-s.udp[port]:
		t.Fatalf("IMDS received UDP %q from %s to %s", got, ns, addr)
	case <-time.After(dropWait):
	}
}

// dial connects from namespace ns.
func dial(t *testing.T, ns, addr string, timeout time.Duration) (net.Conn, error) {
	t.Helper()
	var c net.Conn
	var err error
	inNetns(t, ns, func() { c, err = net.DialTimeout("tcp", addr, timeout) })
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

// greeting connects from ns to addr and returns who answered.
func greeting(t *testing.T, ns, addr string) string {
	t.Helper()
	c, err := dial(t, ns, addr, 2*time.Second)
	if err != nil {
		t.Fatalf("connecting from %s to %s: %v", ns, addr, err)
	}
	return readLine(t, c)
}

func readLine(t *testing.T, c net.Conn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("reading from %s: %v", c.RemoteAddr(), err)
	}
	return strings.TrimSpace(line)
}

func sendUDP(t *testing.T, ns, addr, payload string) {
	t.Helper()
	inNetns(t, ns, func() {
		c, err := net.Dial("udp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte(payload)); err != nil {
			t.Fatal(err)
		}
	})
}

// expectDropped checks that a TCP connection from ns to addr times out: no
// answer, not even a reset, which is what a DROP rule looks like.
func expectDropped(t *testing.T, ns, addr string) {
	t.Helper()
	c, err := dial(t, ns, addr, dropWait)
	if err == nil {
		t.Fatalf("connection from %s to %s succeeded (answered %q)", ns, addr, readLine(t, c))
	}
	if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Fatalf("connection from %s to %s failed with %v, want a timeout (dropped)", ns, addr, err)
	}
}

// expectProxied checks that a pod's connection to an endpoint lands on the
// proxy with the pod's source IP and the endpoint as original destination.
func expectProxied(t *testing.T, topo *topology, s *servers, ep Endpoint) {
	t.Helper()
	if got := greeting(t, topo.pod, ep.Addr.String()); got != "proxy" {
		t.Fatalf("pod's connection to %s reached %q, want the proxy", ep.Addr, got)
	}
	acc := <-s.proxy
	if acc.err != nil {
		t.Fatalf("OriginalDst: %v", acc.err)
	}
	wantSrc := podIP4
	if ep.Addr.Addr().Is6() {
		wantSrc = podIP6
	}
	if got := acc.remote.Addr().Unmap().String(); got != wantSrc {
		t.Errorf("proxy saw source %s, want the pod's %s", got, wantSrc)
	}
	if acc.orig != ep.Addr {
		t.Errorf("OriginalDst = %s, want %s", acc.orig, ep.Addr)
	}
}

func runWithInput(input, name string, args ...string) ([]byte, error) {
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader(input)
	return cmd.CombinedOutput()
}

// ping sends one ICMP echo request from namespace ns over a raw socket (the
// machine has no ping binary) and waits for the reply.
func ping(t *testing.T, ns string, dst netip.Addr) {
	t.Helper()
	network, listen, request, reply := "ip4:icmp", "0.0.0.0", byte(8), byte(0)
	if dst.Is6() {
		network, listen, request, reply = "ip6:ipv6-icmp", "::", 128, 129
	}
	c := listenPacketIn(t, ns, network, listen)
	msg := []byte{request, 0, 0, 0, 0x4d, 0x47, 0, 1, 'm', 'g'}
	if dst.Is4() {
		// ICMPv6 checksums are filled in by the kernel, ICMPv4 ones are not.
		var sum uint32
		for i := 0; i < len(msg); i += 2 {
			sum += uint32(msg[i])<<8 | uint32(msg[i+1])
		}
		sum = (sum >> 16) + (sum & 0xffff)
		sum += sum >> 16
		msg[2], msg[3] = byte(^sum>>8), byte(^sum)
	}
	if _, err := c.WriteTo(msg, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		t.Fatalf("sending ICMP echo to %s: %v", dst, err)
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			t.Fatalf("no ICMP echo reply from %s: %v", dst, err)
		}
		if n >= 8 && buf[0] == reply && buf[4] == 0x4d && buf[5] == 0x47 && from.(*net.IPAddr).IP.Equal(dst.AsSlice()) {
			return
		}
	}
}
