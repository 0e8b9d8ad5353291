package redirect

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// testMark is the upstream mark of the tests that set one.
const testMark = 0x1000

var (
	host4 = netip.MustParseAddr("10.0.0.10")
	host6 = netip.MustParseAddr("fd00:10::10")

	awsV4   = Endpoint{Name: "aws", Addr: netip.MustParseAddrPort("169.254.169.254:80")}
	awsV6   = Endpoint{Name: "aws-v6", Addr: netip.MustParseAddrPort("[fd00:ec2::254]:80")}
	private = Endpoint{Name: "private", Addr: netip.MustParseAddrPort("192.168.100.21:32000")}
)

// rendered prints a family's desired rules as iptables -S would, chain by
// chain, which is easier to read in a failing test than nested slices.
func rendered(rs ruleSet) string {
	var b strings.Builder
	for _, chain := range ownChains {
		for _, r := range rs[chain] {
			b.WriteString("-A " + chain + " " + quote(r) + "\n")
		}
	}
	return b.String()
}

// filterLines is what METAGUARD-FORWARD holds for one endpoint address that
// the policy names on no DNS or NTP port, as iptables -S prints it.
func filterLines(d, name, icmp string) string {
	return `-A METAGUARD-FORWARD -d ` + d + ` -p ` + icmp + ` -m comment --comment "metaguard: let ICMP to ` + name + ` through" -j RETURN
-A METAGUARD-FORWARD -d ` + d + ` -p udp -m udp --dport 53 -m comment --comment "metaguard: let DNS to ` + name + ` through" -j RETURN
-A METAGUARD-FORWARD -d ` + d + ` -p tcp -m tcp --dport 53 -m comment --comment "metaguard: let DNS over TCP to ` + name + ` through" -j RETURN
-A METAGUARD-FORWARD -d ` + d + ` -p udp -m udp --dport 123 -m comment --comment "metaguard: let NTP to ` + name + ` through" -j RETURN
-A METAGUARD-FORWARD -d ` + d + ` -m comment --comment "metaguard: drop traffic to ` + name + ` that bypassed the proxy" -j DROP
`
}

func TestDesiredRules(t *testing.T) {
	tests := []struct {
		name      string
		endpoints []Endpoint
		hosts     []netip.Addr
		mark      uint32
		want      map[family]string
	}{
		{
			name:      "an IPv4 endpoint is DNATed to the host IP and its other traffic is dropped, ICMP, DNS and NTP aside",
			endpoints: []Endpoint{awsV4},
			hosts:     []netip.Addr{host4},
			want: map[family]string{ipv4: filterLines("169.254.169.254/32", "aws", "icmp") + `-A METAGUARD-PREROUTING -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -m comment --comment "metaguard: redirect aws to the proxy" -j DNAT --to-destination 10.0.0.10:8181
`},
		},
		{
			name:      "an IPv6 endpoint gets ip6tables rules with a bracketed DNAT target and ipv6-icmp",
			endpoints: []Endpoint{awsV6},
			hosts:     []netip.Addr{host4, host6},
			want: map[family]string{ipv4: "", ipv6: filterLines("fd00:ec2::254/128", "aws-v6", "ipv6-icmp") + `-A METAGUARD-PREROUTING -d fd00:ec2::254/128 -p tcp -m tcp --dport 80 -m comment --comment "metaguard: redirect aws-v6 to the proxy" -j DNAT --to-destination [fd00:10::10]:8181
`},
		},
		{
			name:      "endpoints are sorted by address so the policy's order does not churn rules",
			endpoints: []Endpoint{private, awsV4},
			hosts:     []netip.Addr{host4},
			want: map[family]string{ipv4: filterLines("169.254.169.254/32", "aws", "icmp") + filterLines("192.168.100.21/32", "private", "icmp") + `-A METAGUARD-PREROUTING -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -m comment --comment "metaguard: redirect aws to the proxy" -j DNAT --to-destination 10.0.0.10:8181
-A METAGUARD-PREROUTING -d 192.168.100.21/32 -p tcp -m tcp --dport 32000 -m comment --comment "metaguard: redirect private to the proxy" -j DNAT --to-destination 10.0.0.10:8181
`},
		},
		{
			name: "two ports on one address share the drop rule and a repeated endpoint is one rule",
			endpoints: []Endpoint{
				{Name: "gcp", Addr: netip.MustParseAddrPort("169.254.169.254:80")},
				{Name: "aws", Addr: netip.MustParseAddrPort("169.254.169.254:80")},
				{Name: "wire", Addr: netip.MustParseAddrPort("169.254.169.254:8080")},
			},
			hosts: []netip.Addr{host4},
			want: map[family]string{ipv4: filterLines("169.254.169.254/32", "aws", "icmp") + `-A METAGUARD-PREROUTING -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -m comment --comment "metaguard: redirect aws to the proxy" -j DNAT --to-destination 10.0.0.10:8181
-A METAGUARD-PREROUTING -d 169.254.169.254/32 -p tcp -m tcp --dport 8080 -m comment --comment "metaguard: redirect wire to the proxy" -j DNAT --to-destination 10.0.0.10:8181
`},
		},
		{
			name:      "the Azure WireServer address keeps serving DNS while its HTTP port is redirected",
			endpoints: []Endpoint{{Name: "wireserver", Addr: netip.MustParseAddrPort("168.63.129.16:80")}},
			hosts:     []netip.Addr{host4},
			want: map[family]string{ipv4: `-A METAGUARD-FORWARD -d 168.63.129.16/32 -p icmp -m comment --comment "metaguard: let ICMP to wireserver through" -j RETURN
-A METAGUARD-FORWARD -d 168.63.129.16/32 -p udp -m udp --dport 53 -m comment --comment "metaguard: let DNS to wireserver through" -j RETURN
-A METAGUARD-FORWARD -d 168.63.129.16/32 -p tcp -m tcp --dport 53 -m comment --comment "metaguard: let DNS over TCP to wireserver through" -j RETURN
-A METAGUARD-FORWARD -d 168.63.129.16/32 -p udp -m udp --dport 123 -m comment --comment "metaguard: let NTP to wireserver through" -j RETURN
-A METAGUARD-FORWARD -d 168.63.129.16/32 -m comment --comment "metaguard: drop traffic to wireserver that bypassed the proxy" -j DROP
-A METAGUARD-PREROUTING -d 168.63.129.16/32 -p tcp -m tcp --dport 80 -m comment --comment "metaguard: redirect wireserver to the proxy" -j DNAT --to-destination 10.0.0.10:8181
`},
		},
		{
			name: "a DNS or NTP port the policy names as an endpoint is not let through: it stays the proxy's",
			endpoints: []Endpoint{
				{Name: "odd-dns", Addr: netip.MustParseAddrPort("169.254.169.254:53")},
				{Name: "gcp", Addr: netip.MustParseAddrPort("169.254.169.254:80")},
				{Name: "odd-ntp", Addr: netip.MustParseAddrPort("169.254.169.254:123")},
			},
			hosts: []netip.Addr{host4},
			want: map[family]string{ipv4: `-A METAGUARD-FORWARD -d 169.254.169.254/32 -p icmp -m comment --comment "metaguard: let ICMP to odd-dns through" -j RETURN
-A METAGUARD-FORWARD -d 169.254.169.254/32 -m comment --comment "metaguard: drop traffic to odd-dns that bypassed the proxy" -j DROP
-A METAGUARD-PREROUTING -d 169.254.169.254/32 -p tcp -m tcp --dport 53 -m comment --comment "metaguard: redirect odd-dns to the proxy" -j DNAT --to-destination 10.0.0.10:8181
-A METAGUARD-PREROUTING -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -m comment --comment "metaguard: redirect gcp to the proxy" -j DNAT --to-destination 10.0.0.10:8181
-A METAGUARD-PREROUTING -d 169.254.169.254/32 -p tcp -m tcp --dport 123 -m comment --comment "metaguard: redirect odd-ntp to the proxy" -j DNAT --to-destination 10.0.0.10:8181
`},
		},
		{
			name:      "a v4-mapped IPv6 endpoint is an IPv4 endpoint",
			endpoints: []Endpoint{{Name: "mapped", Addr: netip.MustParseAddrPort("[::ffff:100.100.100.200]:80")}},
			hosts:     []netip.Addr{host4},
			want: map[family]string{ipv4: filterLines("100.100.100.200/32", "mapped", "icmp") + `-A METAGUARD-PREROUTING -d 100.100.100.200/32 -p tcp -m tcp --dport 80 -m comment --comment "metaguard: redirect mapped to the proxy" -j DNAT --to-destination 10.0.0.10:8181
`},
		},
		{
			name:      "names are reduced to characters that need no quoting in iptables comments",
			endpoints: []Endpoint{{Name: `evil" -j ACCEPT`, Addr: awsV4.Addr}},
			hosts:     []netip.Addr{host4},
			want: map[family]string{ipv4: filterLines("169.254.169.254/32", "evil__-j_ACCEPT", "icmp") + `-A METAGUARD-PREROUTING -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -m comment --comment "metaguard: redirect evil__-j_ACCEPT to the proxy" -j DNAT --to-destination 10.0.0.10:8181
`},
		},
		{
			name:      "an IPv6 endpoint without an IPv6 host IP gets its filter rules in ip6tables but no nat rule: dropped, not redirected",
			endpoints: []Endpoint{awsV4, awsV6},
			hosts:     []netip.Addr{host4},
			want: map[family]string{
				ipv4: filterLines("169.254.169.254/32", "aws", "icmp") + `-A METAGUARD-PREROUTING -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -m comment --comment "metaguard: redirect aws to the proxy" -j DNAT --to-destination 10.0.0.10:8181
`,
				ipv6: filterLines("fd00:ec2::254/128", "aws-v6", "ipv6-icmp"),
			},
		},
		{
			name:      "an IPv4 endpoint with only an IPv6 host IP is dropped in iptables, not redirected",
			endpoints: []Endpoint{awsV4},
			hosts:     []netip.Addr{host6},
			want:      map[family]string{ipv4: filterLines("169.254.169.254/32", "aws", "icmp"), ipv6: ""},
		},
		{
			name:      "with an upstream mark, each redirected endpoint gets an OUTPUT rule that keeps NAT off metaguard's marked connections to it",
			endpoints: []Endpoint{awsV4, awsV6, private},
			hosts:     []netip.Addr{host4},
			mark:      testMark,
			want: map[family]string{
				ipv4: filterLines("169.254.169.254/32", "aws", "icmp") + filterLines("192.168.100.21/32", "private", "icmp") +
					`-A METAGUARD-OUTPUT -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -m mark --mark 0x1000/0x1000 -m comment --comment "metaguard: keep NAT off metaguard connections to aws" -j ACCEPT
-A METAGUARD-OUTPUT -d 192.168.100.21/32 -p tcp -m tcp --dport 32000 -m mark --mark 0x1000/0x1000 -m comment --comment "metaguard: keep NAT off metaguard connections to private" -j ACCEPT
-A METAGUARD-PREROUTING -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -m comment --comment "metaguard: redirect aws to the proxy" -j DNAT --to-destination 10.0.0.10:8181
-A METAGUARD-PREROUTING -d 192.168.100.21/32 -p tcp -m tcp --dport 32000 -m comment --comment "metaguard: redirect private to the proxy" -j DNAT --to-destination 10.0.0.10:8181
`,
				// No host IP: no DNAT, so no request of a pod's reaches
				// the proxy for it and metaguard never connects to it.
				ipv6: filterLines("fd00:ec2::254/128", "aws-v6", "ipv6-icmp"),
			},
		},
		{
			name:  "a family with a host IP and no endpoints wants no rules at all",
			hosts: []netip.Addr{host4, host6},
			want:  map[family]string{ipv4: "", ipv6: ""},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := desiredRules(tt.endpoints, tt.hosts, 8181, tt.mark)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("families: got %d, want %d", len(got), len(tt.want))
			}
			for f, want := range tt.want {
				if g := rendered(got[f]); g != want {
					t.Errorf("%s rules:\n%s\nwant:\n%s", f, g, want)
				}
			}
		})
	}
}

func TestDesiredRulesRefuses(t *testing.T) {
	tests := []struct {
		name     string
		endpoint Endpoint
		wantErr  string
	}{
		{"an endpoint without a port", Endpoint{Name: "x", Addr: netip.AddrPortFrom(netip.MustParseAddr("169.254.169.254"), 0)}, "no port"},
		{"an endpoint with a zone", Endpoint{Name: "os", Addr: netip.MustParseAddrPort("[fe80::a9fe:a9fe%eth0]:80")}, "zone"},
		{"a loopback endpoint", Endpoint{Name: "lo", Addr: netip.MustParseAddrPort("127.0.0.1:80")}, "not a unicast"},
		{"an endpoint without an address", Endpoint{Name: "none"}, "no address"},
	}
	for _, tt := range tests {
		t.Run(tt.name+" is refused", func(t *testing.T) {
			_, err := desiredRules([]Endpoint{tt.endpoint}, []netip.Addr{host4}, 8181, testMark)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("got %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestParseRule(t *testing.T) {
	tests := []struct {
		name, line, chain string
		spec              []string
	}{
		{"a rule with a quoted comment splits into its arguments",
			`-A PREROUTING -m comment --comment "metaguard: x y" -j METAGUARD-PREROUTING`,
			"PREROUTING", []string{"-m", "comment", "--comment", "metaguard: x y", "-j", "METAGUARD-PREROUTING"}},
		{"escaped quotes inside a comment are unescaped",
			`-A FORWARD -m comment --comment "say \"hi\"" -j ACCEPT`,
			"FORWARD", []string{"-m", "comment", "--comment", `say "hi"`, "-j", "ACCEPT"}},
		{"go-iptables' nft counter suffix is dropped",
			`-A FORWARD -j ACCEPT -c 10 20`, "FORWARD", []string{"-j", "ACCEPT"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, spec, ok := parseRule(tt.line)
			if !ok || chain != tt.chain || !slices.Equal(spec, tt.spec) {
				t.Fatalf("got %q %q %v, want %q %q", chain, spec, ok, tt.chain, tt.spec)
			}
		})
	}
	for _, line := range []string{"-P FORWARD ACCEPT", "-N METAGUARD-FORWARD", "# Warning: iptables-legacy tables present, use iptables-legacy to see them", ""} {
		t.Run("a non-rule line is skipped: "+line, func(t *testing.T) {
			if _, _, ok := parseRule(line); ok {
				t.Fatal("parsed as a rule")
			}
		})
	}
}

func TestSameRuleIgnoresMatchOrder(t *testing.T) {
	a := []string{"-d", "1.2.3.4/32", "-p", "tcp", "-m", "tcp", "--dport", "80", "-m", "comment", "--comment", "c", "-j", "DROP"}
	b := []string{"-p", "tcp", "-m", "comment", "--comment", "c", "-d", "1.2.3.4/32", "-m", "tcp", "--dport", "80", "-j", "DROP"}
	if !sameRule(a, b) {
		t.Error("the same matches in another order compare different")
	}
	c := slices.Clone(a)
	c[7] = "81"
	if sameRule(a, c) {
		t.Error("different ports compare equal")
	}
	neg := []string{"!", "-d", "1.2.3.4/32", "-j", "DROP"}
	pos := []string{"-d", "1.2.3.4/32", "-j", "DROP"}
	if sameRule(neg, pos) {
		t.Error("a negated match compares equal to the plain one")
	}
}
