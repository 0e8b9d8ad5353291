// Package redirect owns metaguard's kernel rules: the iptables and ip6tables
// rules that send pods' TCP connections for metadata endpoints to the proxy
// and drop every other packet pods send to those addresses, except ICMP and
// the DNS (UDP and TCP 53) and NTP (UDP 123) that GCP and Azure serve on
// their metadata addresses, unless the policy names that very port.
//
// It installs, verifies, repairs and removes exactly three chains per
// address family, nat METAGUARD-PREROUTING (jumped to from PREROUTING at
// position 1), filter METAGUARD-FORWARD (from FORWARD at position 1) and
// nat METAGUARD-OUTPUT (from OUTPUT at position 1, ACCEPTing metaguard's
// marked upstream connections before any other nat rule can DNAT them),
// and nothing else. Routing-policy rules at priorities 5 to 7 refuse pods'
// TCP to the endpoints' ports if the chains are ever flushed
// (routerules.go), and Run repairs at once on nftables and routing-rule
// change notifications (events.go). The desired rules are a pure function of the endpoints, the
// node's host IPs and the proxy port (desiredRules); a Reconciler compares
// them with what the kernel lists and fixes the difference, so a periodic
// Sync repairs what another agent's iptables-restore flushed or reordered.
//
// An endpoint of a family without a host IP (the IPv6 endpoint of the AWS
// policy on an IPv4-only node) cannot be DNATed; it gets only its filter
// rules, so pods cannot reach it directly (fail closed), and a warning. If
// that family's iptables is unusable altogether (IPv6 disabled in the
// kernel), the family is skipped with a warning.
//
// It must not read policies (cmd converts the policy's endpoints into
// []Endpoint), must not touch rules or chains it does not own, must not
// match on interface names (CNIs name them differently and a missed name is a
// silent bypass) and must never DNAT to 127.0.0.1 (that needs route_localnet,
// CVE-2020-8558). It talks to the kernel only through the iptables binaries,
// via github.com/coreos/go-iptables behind the narrow runner interface, and
// to conntrack only through the conntrack binary.
//
// Public surface: Config (with ModeAuto, ModeNFT, ModeLegacy), Endpoint, New,
// Reconciler (SetEndpoints, Sync, Run, Ready, Backend, Cleanup),
// DefaultSyncPeriod, CleanupAll, OriginalDst, and the chain names NATChain and
// FilterChain. Metrics: metaguard_redirect_syncs_total{result} and
// metaguard_redirect_repairs_total, on the Registerer in Config.
package redirect
