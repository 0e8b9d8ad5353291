package redirect

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Chain names metaguard owns, the same in iptables and ip6tables. Anything
// else in the kernel belongs to someone else and is never modified.
const (
	NATChain    = "METAGUARD-PREROUTING"
	FilterChain = "METAGUARD-FORWARD"
	// OutputChain keeps NAT off metaguard's own connections to the
	// endpoints (see UpstreamDialer).
	OutputChain = "METAGUARD-OUTPUT"
)

// ownChains are the chains above, in the order stateKey and the tests
// print them.
var ownChains = []string{FilterChain, OutputChain, NATChain}

const (
	tableNAT    = "nat"
	tableFilter = "filter"

	// commentPrefix marks every rule metaguard writes, so an operator reading
	// iptables-save knows whom to ask.
	commentPrefix = "metaguard: "

	// maxNameLen keeps comments well under the 256-byte limit of xt_comment.
	maxNameLen = 64
)

// family is an address family: each has its own binary and its own tables.
type family int

const (
	ipv4 family = iota
	ipv6
)

var families = []family{ipv4, ipv6}

func (f family) String() string {
	if f == ipv6 {
		return "ipv6"
	}
	return "ipv4"
}

func familyOf(a netip.Addr) family {
	if a.Is4() {
		return ipv4
	}
	return ipv6
}

// Endpoint is one metadata endpoint whose pod traffic is sent to the proxy.
// Name only labels the rules (iptables comments); Addr decides what matches.
type Endpoint struct {
	Name string
	Addr netip.AddrPort
}

// hook ties one of our chains to the built-in chain that jumps to it.
type hook struct {
	table, builtin, chain string
	comment               string
}

// Filter comes first: when rules are installed from nothing, pods are cut off
// from the endpoints before they are redirected, never the other way round;
// and metaguard's own upstream connections are kept from NAT before pods'
// requests can make it open any.
var hooks = []hook{
	{tableFilter, "FORWARD", FilterChain, "drop pod traffic to metadata endpoints that bypassed the proxy"},
	{tableNAT, "OUTPUT", OutputChain, "keep NAT off metaguard connections to metadata endpoints"},
	{tableNAT, "PREROUTING", NATChain, "send pod connections to metadata endpoints to the proxy"},
}

// hooksIn lists the hooks of the given tables, in install order.
func hooksIn(tables []string) []hook {
	var out []hook
	for _, h := range hooks {
		if slices.Contains(tables, h.table) {
			out = append(out, h)
		}
	}
	return out
}

// jumpRule is the rule in the built-in chain; transientJumpRule is a textually
// different jump used while repairing, so that deleting stale copies of the
// jump (iptables -D deletes the first textual match) never leaves a moment
// without one.
func jumpRule(h hook) []string {
	return []string{"-m", "comment", "--comment", commentPrefix + h.comment, "-j", h.chain}
}

func transientJumpRule(h hook) []string {
	return []string{"-m", "comment", "--comment", commentPrefix + "transient jump while repairing", "-j", h.chain}
}

// ruleSet is what one family's chains must hold, in order.
type ruleSet map[string][][]string // chain name -> rules

func (rs ruleSet) empty() bool {
	for _, rules := range rs {
		if len(rules) > 0 {
			return false
		}
	}
	return true
}

// passThrough are the services besides the metadata HTTP API that clouds run
// on their metadata addresses: on GCP 169.254.169.254 is also the VPC's DNS
// resolver (UDP and TCP 53) and NTP server (UDP 123), and on Azure the
// WireServer address 168.63.129.16, which a policy may name as an endpoint,
// is the VNet's DNS resolver. CoreDNS forwards to these, so dropping them
// would break cluster DNS on install. They carry no metadata and no
// credentials, so they are let through like ICMP.
var passThrough = []struct {
	proto string
	port  uint16
	what  string
}{
	{"udp", 53, "DNS"},
	{"tcp", 53, "DNS over TCP"},
	{"udp", 123, "NTP"},
}

// desiredRules is the whole of metaguard's iptables state as a pure function
// of its inputs. Every family with a host IP or an endpoint gets an entry,
// possibly empty: an empty set means "this family must hold none of our
// chains". A family without a host IP gets no nat rules, as there is no
// address to DNAT to (and no pod request reaches the proxy for its
// endpoints), but its endpoints still get their filter rules, so pods
// cannot reach them directly: fail closed. With a non-zero upstreamMark,
// each redirected endpoint also gets an OUTPUT rule that ACCEPTs
// metaguard's marked connections to it before any other nat rule can
// DNAT them (kube-proxy's KUBE-SERVICES for a Service with the metadata
// address as an external IP, CVE-2020-8554).
//
// The rules are written exactly as iptables -S prints them (both back ends
// agree), so an unchanged kernel compares equal without any extra command.
func desiredRules(endpoints []Endpoint, hostIPs []netip.Addr, port uint16, upstreamMark uint32) (map[family]ruleSet, error) {
	hosts := map[family]netip.Addr{}
	for _, h := range hostIPs {
		hosts[familyOf(h)] = h
	}
	eps, err := normalizeEndpoints(endpoints)
	if err != nil {
		return nil, err
	}
	out := map[family]ruleSet{}
	for f := range hosts {
		out[f] = ruleSet{NATChain: nil, FilterChain: nil, OutputChain: nil}
	}
	named := map[netip.Addr][]uint16{}
	for _, ep := range eps {
		named[ep.Addr.Addr()] = append(named[ep.Addr.Addr()], ep.Addr.Port())
	}
	seenAddr := map[netip.Addr]bool{}
	for _, ep := range eps {
		f := familyOf(ep.Addr.Addr())
		rs, ok := out[f]
		if !ok {
			rs = ruleSet{NATChain: nil, FilterChain: nil, OutputChain: nil}
			out[f] = rs
		}
		if host, ok := hosts[f]; ok {
			to := netip.AddrPortFrom(host, port).String()
			match := []string{"-d", prefix(ep.Addr.Addr()), "-p", "tcp", "-m", "tcp", "--dport", strconv.Itoa(int(ep.Addr.Port()))}
			rs[NATChain] = append(rs[NATChain], append(slices.Clone(match),
				"-m", "comment", "--comment", commentPrefix+"redirect "+ep.Name+" to the proxy",
				"-j", "DNAT", "--to-destination", to,
			))
			if upstreamMark != 0 {
				m := fmt.Sprintf("0x%x/0x%x", upstreamMark, upstreamMark)
				rs[OutputChain] = append(rs[OutputChain], append(slices.Clone(match),
					"-m", "mark", "--mark", m,
					"-m", "comment", "--comment", commentPrefix+"keep NAT off metaguard connections to "+ep.Name,
					"-j", "ACCEPT",
				))
			}
		}
		if seenAddr[ep.Addr.Addr()] {
			continue
		}
		seenAddr[ep.Addr.Addr()] = true
		rs[FilterChain] = append(rs[FilterChain], filterRules(ep, named[ep.Addr.Addr()])...)
	}
	return out, nil
}

// filterRules are the rules for one endpoint address: let ICMP and the
// cloud's DNS and NTP through, drop the rest. named lists the ports of that
// address the policy names as endpoints; those are never let through, not
// even for DNS: the proxy owns them. Their TCP is DNATed before the filter
// table sees it (and so never matches here), and leaving them out keeps the
// port closed if another agent flushes the DNAT rule.
func filterRules(ep Endpoint, named []uint16) [][]string {
	d := prefix(ep.Addr.Addr())
	icmp := "icmp"
	if familyOf(ep.Addr.Addr()) == ipv6 {
		icmp = "ipv6-icmp"
	}
	// ICMP carries nothing the proxy guards and keeps ping and path MTU
	// discovery towards the endpoint working.
	rules := [][]string{{"-d", d, "-p", icmp,
		"-m", "comment", "--comment", commentPrefix + "let ICMP to " + ep.Name + " through",
		"-j", "RETURN"}}
	for _, p := range passThrough {
		if slices.Contains(named, p.port) {
			continue
		}
		rules = append(rules, []string{"-d", d, "-p", p.proto, "-m", p.proto, "--dport", strconv.Itoa(int(p.port)),
			"-m", "comment", "--comment", commentPrefix + "let " + p.what + " to " + ep.Name + " through",
			"-j", "RETURN"})
	}
	return append(rules, []string{"-d", d,
		"-m", "comment", "--comment", commentPrefix + "drop traffic to " + ep.Name + " that bypassed the proxy",
		"-j", "DROP"})
}

// normalizeEndpoints validates, unmaps, sorts and deduplicates endpoints, so
// that the rule order does not depend on the order of the policy file.
func normalizeEndpoints(endpoints []Endpoint) ([]Endpoint, error) {
	var eps []Endpoint
	for _, ep := range endpoints {
		a := ep.Addr.Addr().Unmap()
		switch {
		case !a.IsValid():
			return nil, fmt.Errorf("endpoint %q: no address", ep.Name)
		case a.Zone() != "":
			return nil, fmt.Errorf("endpoint %q: address %s has a zone, which iptables cannot match", ep.Name, ep.Addr)
		case ep.Addr.Port() == 0:
			return nil, fmt.Errorf("endpoint %q: address %s has no port", ep.Name, ep.Addr)
		case a.IsUnspecified() || a.IsLoopback() || a.IsMulticast():
			return nil, fmt.Errorf("endpoint %q: %s is not a unicast address pods can be redirected from", ep.Name, a)
		}
		eps = append(eps, Endpoint{Name: sanitizeName(ep.Name), Addr: netip.AddrPortFrom(a, ep.Addr.Port())})
	}
	slices.SortFunc(eps, func(x, y Endpoint) int {
		return cmp.Or(x.Addr.Compare(y.Addr), strings.Compare(x.Name, y.Name))
	})
	return slices.CompactFunc(eps, func(x, y Endpoint) bool { return x.Addr == y.Addr }), nil
}

// sanitizeName keeps comments free of quotes and escapes, so that the form
// iptables -S prints is the form we wrote.
func sanitizeName(name string) string {
	var b strings.Builder
	for _, r := range name {
		if b.Len() >= maxNameLen {
			break
		}
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', strings.ContainsRune("-_.:/@", r):
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	if b.Len() == 0 {
		return "unnamed"
	}
	return b.String()
}

func prefix(a netip.Addr) string {
	return netip.PrefixFrom(a, a.BitLen()).String()
}

// parseRule splits one line of iptables -S output into the rule spec that
// -I/-D accept, dropping "-A CHAIN". It returns ok=false for policy and
// chain lines ("-P", "-N") and warnings ("# Warning: iptables-legacy tables
// present").
func parseRule(line string) (chain string, spec []string, ok bool) {
	tokens := splitQuoted(line)
	if len(tokens) < 2 || tokens[0] != "-A" {
		return "", nil, false
	}
	spec = tokens[2:]
	// go-iptables rewrites nft counters "[p:b]" into a trailing "-c p b".
	if n := len(spec); n >= 3 && spec[n-3] == "-c" {
		spec = spec[:n-3]
	}
	return tokens[1], spec, true
}

// splitQuoted splits like a shell for the quoting iptables -S uses: double
// quotes around arguments with spaces, backslash escapes inside them.
func splitQuoted(s string) []string {
	var out []string
	var cur strings.Builder
	inQuote, escaped, have := false, false, false
	for _, r := range s {
		switch {
		case escaped:
			cur.WriteRune(r)
			escaped = false
		case r == '\\' && inQuote:
			escaped = true
		case r == '"':
			inQuote = !inQuote
			have = true
		case r == ' ' && !inQuote:
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}

// ruleKey is an order-insensitive form of a rule spec: iptables versions
// have printed match modules in different orders, and treating such a rule as
// different would make every sync "repair" it.
func ruleKey(spec []string) string {
	var groups []string
	for i := 0; i < len(spec); {
		j := i + 1
		if spec[i] == "!" && j < len(spec) {
			j++
		}
		for j < len(spec) && !strings.HasPrefix(spec[j], "-") && spec[j] != "!" {
			j++
		}
		groups = append(groups, strings.Join(spec[i:j], "\x00"))
		i = j
	}
	slices.Sort(groups)
	return strings.Join(groups, "\x01")
}

func sameRule(a, b []string) bool { return ruleKey(a) == ruleKey(b) }

// jumpsTo reports whether a rule spec jumps (or goes) to chain.
func jumpsTo(spec []string, chain string) bool {
	for i := 0; i+1 < len(spec); i++ {
		if (spec[i] == "-j" || spec[i] == "-g" || spec[i] == "--jump" || spec[i] == "--goto") && spec[i+1] == chain {
			return true
		}
	}
	return false
}
