package redirect

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/ti-mo/conntrack"
)

// fakePeers answers conntrack lookups as configured and records them.
type fakePeers struct {
	mu     sync.Mutex
	asked  []tuple
	answer func(orig tuple) (netip.AddrPort, bool, error)
}

func (p *fakePeers) peer(orig tuple) (netip.AddrPort, bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.asked = append(p.asked, orig)
	return p.answer(orig)
}

func (p *fakePeers) Close() error { return nil }

// upstream is a loopback TCP server that reports what each connection
// sent before it was closed.
func upstream(t *testing.T) (addr string, received <-chan string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln.Addr().String(), recordConnections(t, ln, "hello")
}

// recordConnections serves ln until the test ends: it greets each
// connection with greeting and a newline, then reports everything the
// connection sent before it closed (or 5 s passed).
func recordConnections(t *testing.T, ln net.Listener, greeting string) <-chan string {
	t.Helper()
	got := make(chan string, 16)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				c.Write([]byte(greeting + "\n"))
				b, _ := io.ReadAll(c)
				got <- string(b)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return got
}

func newTestDialer(t *testing.T, peers *fakePeers, reg prometheus.Registerer, logs *logBuffer) *UpstreamDialer {
	t.Helper()
	cfg := DialerConfig{Registerer: reg, peers: peers}
	if logs != nil {
		cfg.Logger = logs.logger()
	}
	d, err := NewUpstreamDialer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func TestUpstreamDialerChecksThePeerBeforeAnythingIsSent(t *testing.T) {
	impostor := netip.MustParseAddrPort("10.244.0.66:8080")
	tests := []struct {
		name      string
		answer    func(orig tuple) (netip.AddrPort, bool, error)
		wantErr   error // nil: the connection is returned
		wantNAT   float64
		wantWrite bool
	}{
		{
			name:      "a connection whose replies come from the address dialed is returned",
			answer:    func(orig tuple) (netip.AddrPort, bool, error) { return orig.dst, true, nil },
			wantWrite: true,
		},
		{
			name:      "an untracked connection, which nothing can have NATed, is returned",
			answer:    func(tuple) (netip.AddrPort, bool, error) { return netip.AddrPort{}, false, nil },
			wantWrite: true,
		},
		{
			name:    "a connection DNATed to another address is closed unused, refused and counted",
			answer:  func(tuple) (netip.AddrPort, bool, error) { return impostor, true, nil },
			wantErr: ErrUpstreamNAT,
			wantNAT: 1,
		},
		{
			name: "a connection DNATed to another port of the same address is refused",
			answer: func(orig tuple) (netip.AddrPort, bool, error) {
				return netip.AddrPortFrom(orig.dst.Addr(), orig.dst.Port()+1), true, nil
			},
			wantErr: ErrUpstreamNAT,
			wantNAT: 1,
		},
		{
			name: "a failed lookup fails closed, and is not counted as NAT",
			answer: func(tuple) (netip.AddrPort, bool, error) {
				return netip.AddrPort{}, false, errors.New("netlink: operation not permitted")
			},
			wantErr: errors.New("cannot confirm the peer"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr, received := upstream(t)
			peers := &fakePeers{answer: tt.answer}
			reg := prometheus.NewRegistry()
			d := newTestDialer(t, peers, reg, nil)
			c, err := d.DialContext(context.Background(), "tcp", addr)
			switch {
			case tt.wantErr == nil && err != nil:
				t.Fatalf("DialContext: %v", err)
			case tt.wantErr != nil && err == nil:
				c.Close()
				t.Fatal("DialContext returned a connection")
			case errors.Is(tt.wantErr, ErrUpstreamNAT) && !errors.Is(err, ErrUpstreamNAT):
				t.Fatalf("got %v, want ErrUpstreamNAT", err)
			case tt.wantErr != nil && !errors.Is(tt.wantErr, ErrUpstreamNAT) && !strings.Contains(err.Error(), tt.wantErr.Error()):
				t.Fatalf("got %v, want an error containing %q", err, tt.wantErr)
			}
			if c != nil {
				c.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
				c.Close()
			}
			select {
			case got := <-received:
				if tt.wantWrite && got == "" {
					t.Error("the upstream received nothing")
				}
				if !tt.wantWrite && got != "" {
					t.Errorf("the upstream received %q from a refused connection", got)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the upstream's connection never ended")
			}
			if got := testutil.ToFloat64(d.refused); got != tt.wantNAT {
				t.Errorf("metaguard_upstream_nat_refused_total = %v, want %v", got, tt.wantNAT)
			}
			if n := testutil.CollectAndCount(reg, "metaguard_upstream_nat_refused_total"); n != 1 {
				t.Errorf("the counter is registered %d times", n)
			}
		})
	}
}

func TestUpstreamDialerAsksForTheSocketsOwnTuple(t *testing.T) {
	addr, _ := upstream(t)
	peers := &fakePeers{answer: func(orig tuple) (netip.AddrPort, bool, error) { return orig.dst, true, nil }}
	d := newTestDialer(t, peers, nil, nil)
	c, err := d.DialContext(context.Background(), "tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	want := tuple{src: c.LocalAddr().(*net.TCPAddr).AddrPort(), dst: netip.MustParseAddrPort(addr)}
	if len(peers.asked) != 1 || peers.asked[0] != want {
		t.Errorf("looked up %v, want [%v]", peers.asked, want)
	}
}

func TestUpstreamDialerRefusesWhatIsNotTCP(t *testing.T) {
	peers := &fakePeers{answer: func(orig tuple) (netip.AddrPort, bool, error) { return orig.dst, true, nil }}
	d := newTestDialer(t, peers, nil, nil)
	for _, network := range []string{"udp", "unix", "ip4:icmp"} {
		if c, err := d.DialContext(context.Background(), network, "169.254.169.254:80"); err == nil {
			c.Close()
			t.Errorf("%s: dialed", network)
		}
	}
	if n := len(peers.asked); n != 0 {
		t.Errorf("%d lookups for refused networks", n)
	}
}

func TestUpstreamDialerLogsRefusalsAtMostOncePerInterval(t *testing.T) {
	addr, _ := upstream(t)
	peers := &fakePeers{answer: func(tuple) (netip.AddrPort, bool, error) {
		return netip.MustParseAddrPort("10.244.0.66:80"), true, nil
	}}
	logs := &logBuffer{}
	d := newTestDialer(t, peers, nil, logs)
	for range 5 {
		if _, err := d.DialContext(context.Background(), "tcp", addr); !errors.Is(err, ErrUpstreamNAT) {
			t.Fatalf("got %v", err)
		}
	}
	if n := logs.count("upstream connection refused"); n != 1 {
		t.Errorf("%d log lines for 5 refusals within the interval, want 1", n)
	}
	if got := testutil.ToFloat64(d.refused); got != 5 {
		t.Errorf("counted %v refusals, want 5", got)
	}
}

func TestUpstreamDialerRegistersItsMetricOnce(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := NewUpstreamDialer(DialerConfig{Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	_, err := NewUpstreamDialer(DialerConfig{Registerer: reg})
	var already prometheus.AlreadyRegisteredError
	if !errors.As(err, &already) {
		t.Fatalf("got %v, want AlreadyRegisteredError", err)
	}
}

func TestPeerOfReadsEitherDirectionOfTheEntry(t *testing.T) {
	us := netip.MustParseAddrPort("172.31.0.1:40000")
	imds := netip.MustParseAddrPort("169.254.169.254:80")
	pod := netip.MustParseAddrPort("10.244.0.66:80")
	flow := func(osrc, odst, rsrc, rdst netip.AddrPort) conntrack.Flow {
		var f conntrack.Flow
		f.TupleOrig.IP = conntrack.IPTuple{SourceAddress: osrc.Addr(), DestinationAddress: odst.Addr()}
		f.TupleOrig.Proto = conntrack.ProtoTuple{Protocol: 6, SourcePort: osrc.Port(), DestinationPort: odst.Port()}
		f.TupleReply.IP = conntrack.IPTuple{SourceAddress: rsrc.Addr(), DestinationAddress: rdst.Addr()}
		f.TupleReply.Proto = conntrack.ProtoTuple{Protocol: 6, SourcePort: rsrc.Port(), DestinationPort: rdst.Port()}
		return f
	}
	orig := tuple{src: us, dst: imds}
	tests := []struct {
		name    string
		flow    conntrack.Flow
		want    netip.AddrPort
		wantErr bool
	}{
		{"our first packet made the entry and nothing NATed it: the reply comes from the endpoint", flow(us, imds, imds, us), imds, false},
		{"our first packet made the entry and a DNAT sent it to a pod: the reply comes from the pod", flow(us, imds, pod, us), pod, false},
		{"the peer's answer made the entry (ours were untracked): the peer is its original source", flow(imds, us, us, imds), imds, false},
		{"an entry matching neither direction is an error", flow(pod, imds, imds, pod), netip.AddrPort{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, tracked, err := peerOf(orig, tt.flow)
			if (err != nil) != tt.wantErr || got != tt.want || tracked == tt.wantErr {
				t.Errorf("got %v %v %v, want %v", got, tracked, err, tt.want)
			}
		})
	}
}
