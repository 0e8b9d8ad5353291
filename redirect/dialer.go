package redirect

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// metaguard's own connection to a metadata endpoint is an ordinary socket
// of the node. Anything that DNATs node traffic can capture it: kube-proxy
// does, in nat OUTPUT (KUBE-SERVICES), for a Service whose externalIPs
// name the metadata address (CVE-2020-8554; creating a Service is an
// ordinary tenant right). The pods behind the proxy would then be answered
// by the tenant's impostor, forged credentials included, and the audit log
// would say "allow". Two mechanisms keep that from happening:
//
//   - The dialer marks its sockets (SO_MARK), and the reconciler's
//     METAGUARD-OUTPUT chain, jumped to from nat OUTPUT at position 1,
//     ACCEPTs marked connections to the endpoints. ACCEPT ends the nat
//     table for that packet, and NAT is decided on a connection's first
//     packet, so no later nat rule DNATs it.
//   - Netfilter NAT outside that chain (a rule inserted above the jump
//     before the reconciler repairs it, kube-proxy's nftables mode, which
//     has its own table) is caught after the handshake and before any byte
//     is sent: the dialer asks conntrack for the connection's entry, and if
//     its reply tuple's source is not the endpoint, the connection is
//     closed and the dial fails (the proxy answers 502). No entry means an
//     untracked connection, which no netfilter rule can have NATed. A
//     failed lookup fails the dial too. Translation outside netfilter (an
//     eBPF datapath rewriting the socket's connect, as Cilium's socket
//     load balancing does) leaves no conntrack entry to tell: it is not
//     caught here (docs/operations.md, Known limits).
//
// It never uses NOTRACK for its flows: untracked replies are dropped by
// nodes whose INPUT policy is DROP with an ESTABLISHED,RELATED accept, as
// GKE's Container-Optimized OS has.

// DefaultUpstreamMark is the mark bit of metaguard's upstream connections,
// chosen to be used by none of the node agents that mark packets:
// kube-proxy and the kubelet use 0x4000 and 0x8000, the CNI portmap plugin
// 0x2000, Cilium the magic nibble 0x0f00 and the upper 16 bits (with the
// lower byte for identities), Calico 0xffff0000 by default, AWS VPC CNI
// 0x80, Istio 1337 (0x539) and, in ambient mode, bits of 0xfff, Weave and
// Tailscale bits of 0xff0000. Flannel marks nothing.
const DefaultUpstreamMark = 0x1000

// ErrUpstreamNAT is returned (wrapped) by DialContext when the connection
// was NATed to something other than the address dialed.
var ErrUpstreamNAT = errors.New("the connection to the metadata endpoint was NATed elsewhere")

// connectTimeout bounds a connect to the metadata service, a host away.
const connectTimeout = 2 * time.Second

// DialerConfig is what NewUpstreamDialer needs.
type DialerConfig struct {
	// Mark is set on every socket (SO_MARK, which needs CAP_NET_ADMIN);
	// it must be the reconciler's Config.UpstreamMark. Zero sets none:
	// the conntrack check still runs.
	Mark uint32
	// Logger receives refusals, at most one line per 10 s; nil discards.
	Logger *slog.Logger
	// Registerer receives metaguard_upstream_nat_refused_total; nil
	// leaves it unregistered.
	Registerer prometheus.Registerer

	// peers replaces conntrack in tests; nil means the kernel's.
	peers peerLookup
	// dialNet replaces the socket's creation in tests (a namespace).
	dialNet func(ctx context.Context, d *net.Dialer, network, addr string) (net.Conn, error)
}

// UpstreamDialer opens metaguard's connections to metadata endpoints. It
// is safe for concurrent use; Close releases its conntrack socket.
type UpstreamDialer struct {
	mark    uint32
	dialer  net.Dialer
	dialNet func(ctx context.Context, d *net.Dialer, network, addr string) (net.Conn, error)
	peers   peerLookup
	refused prometheus.Counter
	log     *refusalLog
}

// NewUpstreamDialer builds a dialer. It needs no privilege: the conntrack
// socket is opened on the first dial.
func NewUpstreamDialer(cfg DialerConfig) (*UpstreamDialer, error) {
	d := &UpstreamDialer{
		mark:    cfg.Mark,
		dialNet: cfg.dialNet,
		peers:   cfg.peers,
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "metaguard_upstream_nat_refused_total",
			Help: "Upstream connections closed before use because NAT had pointed them at something other than the metadata endpoint.",
		}),
		log: &refusalLog{log: cfg.Logger},
	}
	if d.log.log == nil {
		d.log.log = slog.New(slog.DiscardHandler)
	}
	if d.peers == nil {
		d.peers = &conntrackPeers{}
	}
	if d.dialNet == nil {
		d.dialNet = func(ctx context.Context, nd *net.Dialer, network, addr string) (net.Conn, error) {
			return nd.DialContext(ctx, network, addr)
		}
	}
	d.dialer = net.Dialer{Timeout: connectTimeout, KeepAlive: 30 * time.Second}
	if cfg.Mark != 0 {
		mark := int(cfg.Mark)
		d.dialer.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, mark)
			}); err != nil {
				return err
			}
			if serr != nil {
				return fmt.Errorf("setting SO_MARK 0x%x (needs CAP_NET_ADMIN): %w", cfg.Mark, serr)
			}
			return nil
		}
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(d.refused); err != nil {
			return nil, fmt.Errorf("registering upstream dialer metrics: %w", err)
		}
	}
	return d, nil
}

// DialContext connects to addr over TCP, marked, and returns the
// connection only once conntrack shows that its peer is addr itself.
func (d *UpstreamDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, fmt.Errorf("upstream dialer: network %q is not TCP", network)
	}
	c, err := d.dialNet(ctx, &d.dialer, network, addr)
	if err != nil {
		return nil, err
	}
	local, lok := c.LocalAddr().(*net.TCPAddr)
	remote, rok := c.RemoteAddr().(*net.TCPAddr)
	if !lok || !rok {
		c.Close()
		return nil, fmt.Errorf("upstream dialer: %T is not a TCP connection", c)
	}
	orig := tuple{src: unmapped(local.AddrPort()), dst: unmapped(remote.AddrPort())}
	peer, tracked, err := d.peers.peer(orig)
	if err := checkPeer(orig, peer, tracked, err); err != nil {
		c.Close()
		if errors.Is(err, ErrUpstreamNAT) {
			d.refused.Inc()
		}
		d.log.refusal(err)
		return nil, err
	}
	return c, nil
}

// Close releases the conntrack socket.
func (d *UpstreamDialer) Close() error { return d.peers.Close() }

// tuple is a connection's original direction, as the socket sees it.
type tuple struct{ src, dst netip.AddrPort }

func unmapped(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// checkPeer decides whether a connection may be used: conntrack must show
// that its packets go to the address it was opened to, or hold no entry
// for it (untracked). A lookup that failed fails closed.
func checkPeer(orig tuple, peer netip.AddrPort, tracked bool, lookupErr error) error {
	switch {
	case lookupErr != nil:
		return fmt.Errorf("upstream dialer: cannot confirm the peer of %s -> %s in conntrack, refusing: %w", orig.src, orig.dst, lookupErr)
	case !tracked:
		return nil
	case unmapped(peer) != orig.dst:
		return fmt.Errorf("upstream dialer: %s -> %s is answered by %s: %w", orig.src, orig.dst, peer, ErrUpstreamNAT)
	}
	return nil
}

// peerLookup finds where a connection's packets really go.
type peerLookup interface {
	// peer returns the connection's peer after NAT, or tracked=false
	// when conntrack holds no entry for it.
	peer(orig tuple) (peer netip.AddrPort, tracked bool, err error)
	Close() error
}

// refusalLog logs refusals, at most one line per interval with the number
// left out: a pod that makes every request dial into a capture must not
// flood the operational log.
type refusalLog struct {
	log *slog.Logger

	mu         sync.Mutex
	last       time.Time
	suppressed int
}

const refusalLogInterval = 10 * time.Second

func (l *refusalLog) refusal(err error) {
	l.mu.Lock()
	now := time.Now()
	if !l.last.IsZero() && now.Sub(l.last) < refusalLogInterval {
		l.suppressed++
		l.mu.Unlock()
		return
	}
	suppressed := l.suppressed
	l.last, l.suppressed = now, 0
	l.mu.Unlock()
	l.log.Warn("upstream connection refused", "err", err, "refusals_not_logged_since_last_line", suppressed)
}
