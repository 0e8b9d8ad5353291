package redirect

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ruleTable is the part of the kernel's routing-policy database metaguard
// uses: its own rules, listed, added and deleted one by one. Unit tests
// use an in-memory table; kernel tests a netlink handle in a namespace of
// their own.
type ruleTable interface {
	// list returns the family's rules that are metaguard's (see
	// routerules.go), in kernel order, and how many other rules sit at
	// metaguard's priorities. A family the kernel does not support
	// returns an error matching errFamilyUnsupported.
	list(f family) (ours []routeRule, foreign int, err error)
	add(r routeRule) error
	del(r routeRule) error
}

// errFamilyUnsupported marks a family the kernel has no routing rules for
// (IPv6 disabled at boot).
var errFamilyUnsupported = errors.New("address family not supported by the kernel")

// netlinkRules is the kernel's rule table through a netlink handle.
type netlinkRules struct{ h *netlink.Handle }

var _ ruleTable = netlinkRules{}

func netlinkFamily(f family) int {
	if f == ipv6 {
		return netlink.FAMILY_V6
	}
	return netlink.FAMILY_V4
}

func (t netlinkRules) list(f family) ([]routeRule, int, error) {
	all, err := t.h.RuleList(netlinkFamily(f))
	if err != nil {
		if errors.Is(err, unix.EAFNOSUPPORT) {
			return nil, 0, fmt.Errorf("listing %s rules: %w: %w", f, errFamilyUnsupported, err)
		}
		return nil, 0, fmt.Errorf("listing %s rules: %w", f, err)
	}
	var ours []routeRule
	foreign := 0
	for _, kr := range all {
		if kr.Priority < rulePrioritySkipLocal || kr.Priority > rulePriorityTarget {
			continue
		}
		if r, ok := parseKernelRule(f, kr); ok {
			ours = append(ours, r)
		} else {
			foreign++
		}
	}
	return ours, foreign, nil
}

// parseKernelRule recognises one of metaguard's rules. netlink's listing does
// not report a rule's action for anything but goto, so a refusal is told
// from a nop by its selectors, and both by having no table.
func parseKernelRule(f family, kr netlink.Rule) (routeRule, bool) {
	if kr.Protocol != ruleProtocol || kr.Table != 0 || kr.Invert || kr.Src != nil || kr.Mark != 0 || kr.Mask != nil ||
		kr.OifName != "" || kr.Tos != 0 || kr.Sport != nil || kr.UIDRange != nil || kr.TunID != 0 {
		return routeRule{}, false
	}
	if kr.Priority == rulePriorityTarget {
		ok := kr.Goto < 0 && kr.Dst == nil && kr.IifName == "" && kr.IPProto == 0 && kr.Dport == nil
		return routeRule{family: f, action: ruleNop}, ok
	}
	if kr.Dst == nil || kr.IPProto != unix.IPPROTO_TCP || kr.Dport == nil || kr.Dport.Start != kr.Dport.End || kr.Dport.Start == 0 {
		return routeRule{}, false
	}
	addr, ok := netip.AddrFromSlice(kr.Dst.IP)
	if !ok {
		return routeRule{}, false
	}
	bits, _ := kr.Dst.Mask.Size()
	r := routeRule{family: f, dst: netip.PrefixFrom(addr.Unmap(), bits), port: kr.Dport.Start}
	if familyOf(r.dst.Addr()) != f || bits != r.dst.Addr().BitLen() {
		return routeRule{}, false
	}
	switch {
	case kr.Priority == rulePrioritySkipLocal && kr.IifName == "lo" && kr.Goto == rulePriorityTarget:
		r.action = ruleSkipLocal
	case kr.Priority == rulePriorityRefuse && kr.IifName == "" && kr.Goto < 0:
		r.action = ruleRefuse
	default:
		return routeRule{}, false
	}
	return r, true
}

// kernelRule is r as netlink writes it.
func kernelRule(r routeRule) *netlink.Rule {
	kr := netlink.NewRule()
	kr.Family = netlinkFamily(r.family)
	kr.Priority = r.priority()
	kr.Protocol = ruleProtocol
	switch r.action {
	case ruleNop:
		kr.Type = unix.FR_ACT_NOP
		return kr
	case ruleSkipLocal:
		kr.IifName = "lo"
		kr.Goto = rulePriorityTarget
	case ruleRefuse:
		kr.Type = unix.FR_ACT_PROHIBIT
	}
	kr.Dst = &net.IPNet{IP: r.dst.Addr().AsSlice(), Mask: net.CIDRMask(r.dst.Bits(), r.dst.Addr().BitLen())}
	kr.IPProto = unix.IPPROTO_TCP
	kr.Dport = netlink.NewRulePortRange(r.port, r.port)
	return kr
}

func (t netlinkRules) add(r routeRule) error {
	if err := t.h.RuleAdd(kernelRule(r)); err != nil {
		return fmt.Errorf("adding rule %q: %w", r, err)
	}
	return nil
}

func (t netlinkRules) del(r routeRule) error {
	err := t.h.RuleDel(kernelRule(r))
	if errors.Is(err, unix.ENOENT) {
		return nil // gone already: what we wanted
	}
	if err != nil {
		return fmt.Errorf("deleting rule %q: %w", r, err)
	}
	return nil
}
