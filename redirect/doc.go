// Package redirect owns metaguard's kernel state: the iptables and
// ip6tables rules that send pods' TCP connections for metadata endpoints to
// the proxy and drop every other packet pods send to those addresses,
// except ICMP and the DNS (UDP and TCP 53) and NTP (UDP 123) that GCP and
// Azure serve on their metadata addresses, unless the policy names that
// very port; the routing-policy rules that refuse pods' connections to the
// endpoints if those chains are ever flushed; and the dialer of metaguard's
// own connections to the endpoints, which other agents' NAT cannot
// capture.
//
// Chains. It installs, verifies, repairs and removes exactly three chains
// per address family, nat METAGUARD-PREROUTING (jumped to from PREROUTING
// at position 1), filter METAGUARD-FORWARD (from FORWARD at position 1) and
// nat METAGUARD-OUTPUT (from OUTPUT at position 1; it ACCEPTs metaguard's
// marked upstream connections before any other nat rule can DNAT them),
// and nothing else. The desired rules are a pure function of the
// endpoints, the node's host IPs, the proxy port and the upstream mark
// (desiredRules); a Reconciler compares them with what the kernel lists
// and fixes the difference.
//
// Routing rules. A flush of the nat and filter tables (a firewall reload, an
// agent's iptables-restore, iptables -F) would let pods reach the IMDS until
// the next repair. Rules in the routing-policy database (ip rule), which no
// iptables rewrite touches, refuse forwarded TCP to each endpoint's port
// (prohibit) while locally generated traffic skips them; the DNATed
// connections are routed to the host IP and never match them. They sit at
// priorities 5 to 7 with protocol kernel; routerules.go says why, and what
// they leave alone. desiredRouteRules computes them, and the same
// reconciler keeps them.
//
// Repairs. A periodic Sync repairs whatever another agent flushed or
// reordered. Run also subscribes to the kernel's change notifications
// (nftables changes with the nft back end, routing-rule changes with both)
// and syncs at once on a change that may concern metaguard's rules; the
// timer stays as the fallback (the legacy back end notifies nothing).
//
// Upstream connections. UpstreamDialer marks its sockets (SO_MARK), which
// the METAGUARD-OUTPUT rules exempt from NAT, and before anything is sent
// looks the connection up in conntrack: if its reply does not come from the
// endpoint (NAT happened anyway: a rule above ours, kube-proxy's nftables
// mode), the connection is closed and the dial fails. It never uses
// NOTRACK: untracked replies are dropped by nodes whose INPUT policy is DROP
// with an ESTABLISHED accept.
//
// An endpoint of a family without a host IP (the IPv6 endpoint of the AWS
// policy on an IPv4-only node) cannot be DNATed; it gets only its filter
// rules and its routing rules, so pods cannot reach it directly (fail
// closed), and a warning. If that family's iptables is unusable altogether
// (IPv6 disabled in the kernel), the family is skipped with a warning.
//
// It must not read policies (cmd converts the policy's endpoints into
// []Endpoint), must not touch rules or chains it does not own, must not
// match on interface names (CNIs name them differently and a missed name is
// a silent bypass; "iif lo" is the kernel's own name for locally generated
// traffic) and must never DNAT to 127.0.0.1 (that needs route_localnet,
// CVE-2020-8558). It talks to iptables only through the iptables binaries,
// via github.com/coreos/go-iptables behind the narrow runner interface; to
// the routing rules through github.com/vishvananda/netlink behind
// ruleTable; to notifications and conntrack through netlink sockets; and
// flushes conntrack entries through the conntrack binary.
//
// Public surface: Config (with ModeAuto, ModeNFT, ModeLegacy), Endpoint,
// New, Reconciler (SetEndpoints, Sync, Run, Ready, Backend, Cleanup),
// DefaultSyncPeriod, CleanupAll, OriginalDst, the chain names NATChain,
// FilterChain and OutputChain, UpstreamDialer (NewUpstreamDialer,
// DialerConfig, DefaultUpstreamMark, ErrUpstreamNAT), and ChooseBackend
// with WriteBackendFile for the iptables wrapper. Metrics:
// metaguard_redirect_syncs_total{result} and
// metaguard_redirect_repairs_total, on the Registerer in Config, and
// metaguard_upstream_nat_refused_total, on the Registerer in DialerConfig.
package redirect
