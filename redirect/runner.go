package redirect

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netlink"
)

// runner is the part of go-iptables metaguard uses. Keeping it this narrow
// lets the ordering and idempotency logic run against an in-memory table in
// unit tests, and makes every kernel command the reconciler can issue visible
// in one place.
type runner interface {
	List(table, chain string) ([]string, error)
	ListChains(table string) ([]string, error)
	Insert(table, chain string, pos int, rulespec ...string) error
	Delete(table, chain string, rulespec ...string) error
	DeleteById(table, chain string, id int) error
	NewChain(table, chain string) error
	ClearAndDeleteChain(table, chain string) error
}

var _ runner = (*iptables.IPTables)(nil)

// backend is an iptables back end. The kernel keeps nft and legacy rules
// apart: rules written with the wrong one are evaluated, but are invisible to
// the tools and agents (kube-proxy, the CNI) that use the other.
type backend string

const (
	backendNFT    backend = "nft"
	backendLegacy backend = "legacy"
)

var backends = []backend{backendNFT, backendLegacy}

// binaryName is the name of the iptables binary for a family and back end, as
// Debian, RHEL and Alpine install them.
func binaryName(f family, b backend) string {
	name := "iptables"
	if f == ipv6 {
		name = "ip6tables"
	}
	return name + "-" + string(b)
}

// lockWaitSeconds bounds how long one command waits for the xtables lock
// (go-iptables passes --wait): a stuck holder must not stall syncs forever.
const lockWaitSeconds = 20

// system is what the reconciler needs from the machine. Production uses
// hostSystem; tests substitute an in-memory table or binaries that run inside
// a test network namespace.
type system struct {
	// newRunner builds a runner for one family and back end. It fails when
	// the binary is missing.
	newRunner func(family, backend) (runner, error)
	// legacyTables lists the legacy xtables tables that exist for a family.
	// Listing a legacy table with iptables-legacy creates it, so detection
	// and cleanup consult this first and leave legacy alone when it is unused.
	legacyTables func(family) ([]string, error)
	// flusher removes conntrack entries; nil disables flushing.
	flusher conntrackFlusher
	// rules is the routing-policy database; nil manages no routing rules.
	rules ruleTable
	// watchers report changes to what the reconciler owns, for a back end;
	// nil leaves repairs to the sync period.
	watchers func(backend) []changeWatcher
}

func hostSystem() system {
	return system{
		newRunner:    newIPTables,
		legacyTables: procLegacyTables,
		flusher:      execConntrack{path: "conntrack"},
		// The zero handle opens a socket per request in the calling
		// thread's network namespace: the node's.
		rules:    netlinkRules{h: &netlink.Handle{}},
		watchers: func(b backend) []changeWatcher { return kernelWatchers(b, 0) },
	}
}

func newIPTables(f family, b backend) (runner, error) {
	proto := iptables.ProtocolIPv4
	if f == ipv6 {
		proto = iptables.ProtocolIPv6
	}
	ipt, err := iptables.New(iptables.IPFamily(proto), iptables.Path(binaryName(f, b)), iptables.Timeout(lockWaitSeconds))
	if err != nil {
		return nil, err
	}
	return ipt, nil
}

// procLegacyTables reads the calling thread's network namespace's list of
// legacy tables; the file is absent when the kernel has no legacy support.
func procLegacyTables(f family) ([]string, error) {
	name := "/proc/thread-self/net/ip_tables_names"
	if f == ipv6 {
		name = "/proc/thread-self/net/ip6_tables_names"
	}
	data, err := os.ReadFile(name)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	return strings.Fields(string(data)), nil
}

// isMissing reports whether an iptables command failed because the chain or
// rule does not exist. Both back ends exit with status 1 for that and with
// other statuses for lock, permission and kernel errors; the nft message
// ("chain `X' in table `nat' is incompatible") is not one go-iptables'
// IsNotExist recognises, so the status is the reliable signal.
func isMissing(err error) bool {
	var e interface{ ExitStatus() int }
	return errors.As(err, &e) && e.ExitStatus() == 1
}
