package redirect

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// The policy-routing backstop. The iptables chains live in tables that
// other agents rewrite (a firewall reload, kube-proxy or a CNI restoring
// their own tables, an operator's iptables -F), and until the next sync a
// pod's connection to an endpoint would be forwarded to the IMDS directly.
// Routing-policy rules are not part of any iptables table, so those
// rewrites leave them alone, and the kernel consults them for every
// forwarded packet:
//
//	5: to <endpoint> iif lo ipproto tcp dport <port> goto 7
//	6: to <endpoint> ipproto tcp dport <port> prohibit
//	7: nop
//
// A pod's connection that metaguard DNATed in PREROUTING is routed to the
// host IP, not to the endpoint, so rule 6 never sees it: it catches only
// the traffic that escaped the DNAT. Locally generated traffic (metaguard's
// own upstream connections, hostNetwork pods, the kubelet) has iif lo and
// skips rule 6 through the goto, then goes on through the node's rules as
// if metaguard's were absent; a "lookup main" instead would skip every rule
// between ours and main's (Cilium's proxy rules, an operator's table).
// Rule 7 is the goto's target: the kernel lets a goto fall through when its
// target priority holds no rule, so the nop is installed first and removed
// last. Only TCP to each endpoint's port is refused: the DNS and NTP that
// GCP and Azure serve on their metadata addresses, and ICMP, are untouched.
//
// prohibit, not blackhole: the pod gets ICMP "administratively prohibited"
// and its connect fails at once with EHOSTUNREACH (EACCES over IPv6), so an
// SDK falls back to its next credential source instead of waiting for a
// timeout; the IMDS never sees a packet either way.
//
// Priorities: the rules must come before any rule that routes pod traffic
// to a table with a default route, or that traffic never reaches them:
// AWS VPC CNI uses 10 (security groups for pods, "from <pod> lookup <branch
// ENI table>"), 512, 1024 and 1536; Cilium 1 (IPsec), 9 and 10 (its L7
// proxy), 20, 100 (where it moves the local table), 109 to 112; Calico 99
// and 100 (WireGuard, egress gateways); Tailscale 5210 to 5270. 5, 6 and 7
// are used by none of them. They come after the kernel's "0: lookup local",
// so an endpoint that is a local address of the node is not covered (nor is
// it by the FORWARD chain).
//
// Ownership: a rule is metaguard's when it sits at one of these priorities,
// carries protocol "kernel" and has one of the three shapes above. Protocol
// kernel is what Cilium uses too, for the same reason: systemd-networkd's
// ManageForeignRoutingPolicyRules (on by default) deletes every rule of
// any other protocol it did not configure itself. `ip rule add` without
// "protocol" gives rules protocol "unspec", so an operator's rule at these
// priorities is never taken for ours.

// Routing-rule priorities metaguard owns.
const (
	rulePrioritySkipLocal = 5 // goto past the refusal for locally generated traffic
	rulePriorityRefuse    = 6 // prohibit TCP to an endpoint's port
	rulePriorityTarget    = 7 // nop: the goto's target
)

// ruleProtocol is RTPROT_KERNEL (see above).
const ruleProtocol = 2

// ruleAction is what one of metaguard's routing rules does.
type ruleAction uint8

const (
	ruleNop ruleAction = iota + 1
	ruleSkipLocal
	ruleRefuse
)

// routeRule is one of metaguard's routing-policy rules, reduced to what
// tells them apart. dst and port are zero for ruleNop.
type routeRule struct {
	family family
	action ruleAction
	dst    netip.Prefix
	port   uint16
}

func (r routeRule) priority() int {
	switch r.action {
	case ruleSkipLocal:
		return rulePrioritySkipLocal
	case ruleRefuse:
		return rulePriorityRefuse
	default:
		return rulePriorityTarget
	}
}

// String is the rule as `ip rule` prints it, for logs and tests.
func (r routeRule) String() string {
	p := strconv.Itoa(r.priority())
	switch r.action {
	case ruleSkipLocal:
		return fmt.Sprintf("%s: to %s iif lo ipproto tcp dport %d goto %d", p, r.dst, r.port, rulePriorityTarget)
	case ruleRefuse:
		return fmt.Sprintf("%s: to %s ipproto tcp dport %d prohibit", p, r.dst, r.port)
	default:
		return p + ": nop"
	}
}

// desiredRouteRules is the backstop for the endpoints: per family, the nop
// target, then one skip and one refusal per endpoint address and port, in
// the order they must be added. Every family has an entry; an empty one
// means "none of ours may remain". Unlike the DNAT, a family needs no host
// IP for its rules: an endpoint pods cannot be redirected to is one they
// must not reach at all.
func desiredRouteRules(endpoints []Endpoint) (map[family][]routeRule, error) {
	eps, err := normalizeEndpoints(endpoints)
	if err != nil {
		return nil, err
	}
	out := map[family][]routeRule{ipv4: nil, ipv6: nil}
	for _, f := range families {
		var skips, refusals []routeRule
		for _, ep := range eps {
			if familyOf(ep.Addr.Addr()) != f {
				continue
			}
			dst := netip.PrefixFrom(ep.Addr.Addr(), ep.Addr.Addr().BitLen())
			skips = append(skips, routeRule{family: f, action: ruleSkipLocal, dst: dst, port: ep.Addr.Port()})
			refusals = append(refusals, routeRule{family: f, action: ruleRefuse, dst: dst, port: ep.Addr.Port()})
		}
		if len(skips) == 0 {
			continue
		}
		out[f] = append(append([]routeRule{{family: f, action: ruleNop}}, skips...), refusals...)
	}
	return out, nil
}

// planRouteRules turns the rules a family has into the ones it wants: the
// missing ones to add (in want's order: target, skips, refusals, so that a
// refusal never exists without the skip that exempts local traffic) and
// the unwanted ones, duplicates included, to delete (refusals first, the
// target last, for the same reason).
func planRouteRules(have, want []routeRule) (add, del []routeRule) {
	seen := map[routeRule]bool{}
	for _, r := range have {
		if seen[r] || !slices.Contains(want, r) {
			del = append(del, r)
		}
		seen[r] = true
	}
	for _, r := range want {
		if !seen[r] {
			add = append(add, r)
		}
	}
	slices.SortStableFunc(del, func(a, b routeRule) int { return int(b.action) - int(a.action) })
	return add, del
}

// routeRulesKey identifies a desired set of routing rules, for stateKey.
func routeRulesKey(want map[family][]routeRule) string {
	var b strings.Builder
	for _, f := range families {
		for _, r := range want[f] {
			fmt.Fprintf(&b, "%s %s\n", f, r)
		}
	}
	return b.String()
}
