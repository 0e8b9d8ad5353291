package sandbox

import (
	"context"
	"fmt"
	"net/netip"
)

// The sandbox's addressing. The node namespace is the node's host network;
// the cloud namespace sits behind it, as the hypervisor's metadata service
// sits behind a real node.
var (
	// HostIP is the node's address (metaguard's --host-ip), on the link to
	// the cloud namespace.
	HostIP   = netip.MustParseAddr("172.31.0.1")
	HostIPv6 = netip.MustParseAddr("fd00:31::1")
	// CloudIP is the cloud namespace's end of that link; the node routes
	// every metadata address through it.
	CloudIP   = netip.MustParseAddr("172.31.0.2")
	CloudIPv6 = netip.MustParseAddr("fd00:31::2")
	// BridgeIP is the pods' default gateway, on the bridge BridgeName in
	// the node namespace.
	BridgeIP   = netip.MustParseAddr("10.244.0.1")
	BridgeIPv6 = netip.MustParseAddr("fd00:10:244::1")
	// PodCIDR and PodCIDRv6 hold node-a's pod addresses; OtherPodCIDR
	// node-b's, which exist only in the API.
	PodCIDR      = netip.MustParsePrefix("10.244.0.0/24")
	PodCIDRv6    = netip.MustParsePrefix("fd00:10:244::/64")
	OtherPodCIDR = netip.MustParsePrefix("10.244.1.0/24")

	// AWSIMDS is amazon-ec2-metadata-mock, IMDSv1 and v2.
	AWSIMDS = netip.MustParseAddrPort("169.254.169.254:80")
	// AWSIMDSv6 is the same mock on the IPv6 metadata address.
	AWSIMDSv6 = netip.MustParseAddrPort("[fd00:ec2::254]:80")
	// AWSIMDSv2Only is a second mock that refuses IMDSv1 (-I).
	AWSIMDSv2Only = netip.MustParseAddrPort("169.254.169.250:80")
	// LiteralService is a metadata-like HTTP service (another mock) on an
	// address and port a policy names literally, with flavor generic.
	LiteralService = netip.MustParseAddrPort("192.168.100.21:32000")
	// GCPMetadata and AzureMetadata are the project's fakecloud.
	GCPMetadata   = netip.MustParseAddrPort("169.254.169.252:80")
	AzureMetadata = netip.MustParseAddrPort("169.254.169.251:80")
	// GCPMetadataV6 is GCE's IPv6 metadata address, served by the GCP fake.
	GCPMetadataV6 = netip.MustParseAddrPort("[fd20:ce::254]:80")
	// MetadataIP is the address client libraries hard-code; which cloud
	// answers there is Options.MetadataCloud (AWS: AWSIMDS).
	MetadataIP = netip.MustParseAddrPort("169.254.169.254:80")
)

// Names of the nodes, of the bridge and of the interfaces inside the
// sandbox's namespaces. Interface names live in their namespace, so they
// never clash with the machine's or another run's.
const (
	NodeName      = "node-a"
	OtherNodeName = "node-b"
	BridgeName    = "mgbr0"
	uplinkName    = "eth0"
)

// cloudAddrs are the addresses the cloud namespace answers on.
func cloudAddrs() []netip.Addr {
	return []netip.Addr{
		AWSIMDS.Addr(), AWSIMDSv6.Addr(), AWSIMDSv2Only.Addr(), LiteralService.Addr(),
		GCPMetadata.Addr(), AzureMetadata.Addr(), GCPMetadataV6.Addr(),
	}
}

func (s *Sandbox) nodeNetns() string  { return s.Prefix + "-node" }
func (s *Sandbox) cloudNetns() string { return s.Prefix + "-cloud" }

// NodeNetns is the name of the node's network namespace (for ip netns
// exec, StartProcess, NetnsDialer).
func (s *Sandbox) NodeNetns() string { return s.nodeNetns() }

// CloudNetns is the name of the cloud's network namespace.
func (s *Sandbox) CloudNetns() string { return s.cloudNetns() }

func prefixLen(a netip.Addr) int {
	if a.Is4() {
		return 32
	}
	return 128
}

// setupNetwork makes the node and cloud namespaces, the link between them,
// the metadata addresses and routes, and the pods' bridge.
func (s *Sandbox) setupNetwork(ctx context.Context) error {
	node, cloud := s.nodeNetns(), s.cloudNetns()
	for _, ns := range []string{node, cloud} {
		if err := addNetns(ctx, ns); err != nil {
			return err
		}
		s.netns = append(s.netns, ns)
		// No duplicate address detection: addresses are unique by
		// construction, and DAD would hold IPv6 back for a second or two.
		if err := writeSysctls(ns, map[string]string{
			"net.ipv6.conf.all.accept_dad":     "0",
			"net.ipv6.conf.default.accept_dad": "0",
		}); err != nil {
			return err
		}
	}
	// The node routes between pods and the cloud; the machine's own
	// forwarding settings are untouched (these are the namespace's).
	if err := writeSysctls(node, map[string]string{
		"net.ipv4.ip_forward":             "1",
		"net.ipv6.conf.all.forwarding":    "1",
		"net.ipv4.conf.all.rp_filter":     "0",
		"net.ipv4.conf.default.rp_filter": "0",
	}); err != nil {
		return err
	}

	nodeCmds := []string{
		"link set lo up",
		// Created here with its peer directly in the cloud namespace: the
		// pair never exists in the root namespace, not even for a moment.
		fmt.Sprintf("link add %s type veth peer name %s netns %s", uplinkName, uplinkName, cloud),
		fmt.Sprintf("addr add %s/24 dev %s", HostIP, uplinkName),
		fmt.Sprintf("addr add %s/64 dev %s nodad", HostIPv6, uplinkName),
		fmt.Sprintf("link set %s up", uplinkName),
		fmt.Sprintf("link add %s type bridge", BridgeName),
		fmt.Sprintf("addr add %s/%d dev %s", BridgeIP, PodCIDR.Bits(), BridgeName),
		fmt.Sprintf("addr add %s/%d dev %s nodad", BridgeIPv6, PodCIDRv6.Bits(), BridgeName),
		fmt.Sprintf("link set %s up", BridgeName),
	}
	for _, a := range cloudAddrs() {
		via := CloudIP
		if a.Is6() {
			via = CloudIPv6
		}
		nodeCmds = append(nodeCmds, fmt.Sprintf("route add %s/%d via %s", a, prefixLen(a), via))
	}
	if err := ipBatch(ctx, node, nodeCmds...); err != nil {
		return err
	}

	cloudCmds := []string{
		"link set lo up",
		fmt.Sprintf("addr add %s/24 dev %s", CloudIP, uplinkName),
		fmt.Sprintf("addr add %s/64 dev %s nodad", CloudIPv6, uplinkName),
		fmt.Sprintf("link set %s up", uplinkName),
		fmt.Sprintf("route add 10.244.0.0/16 via %s", HostIP),
		fmt.Sprintf("route add fd00:10:244::/48 via %s", HostIPv6),
	}
	for _, a := range cloudAddrs() {
		cloudCmds = append(cloudCmds, loAddr(a))
	}
	return ipBatch(ctx, cloud, cloudCmds...)
}

// addPodNetns makes a pod's namespace with its end of a veth pair as eth0,
// the other end on the node's bridge, the pod's addresses and default
// routes through the bridge.
func (s *Sandbox) addPodNetns(ctx context.Context, netns, hostVeth string, v4, v6 netip.Addr) error {
	if err := addNetns(ctx, netns); err != nil {
		return err
	}
	if err := writeSysctls(netns, map[string]string{
		"net.ipv6.conf.all.accept_dad":     "0",
		"net.ipv6.conf.default.accept_dad": "0",
	}); err != nil {
		return err
	}
	if err := ipBatch(ctx, s.nodeNetns(),
		fmt.Sprintf("link add %s type veth peer name eth0 netns %s", hostVeth, netns),
		fmt.Sprintf("link set %s master %s", hostVeth, BridgeName),
		fmt.Sprintf("link set %s up", hostVeth),
	); err != nil {
		return err
	}
	return ipBatch(ctx, netns,
		"link set lo up",
		fmt.Sprintf("addr add %s/%d dev eth0", v4, PodCIDR.Bits()),
		fmt.Sprintf("addr add %s/%d dev eth0 nodad", v6, PodCIDRv6.Bits()),
		"link set eth0 up",
		fmt.Sprintf("route add default via %s", BridgeIP),
		fmt.Sprintf("route add ::/0 via %s", BridgeIPv6),
	)
}

// AddCloudAddress makes the cloud namespace answer on one more address
// (on its loopback, as the metadata addresses are) and routes it from the
// node through the cloud link, so that a service started later in
// CloudNetns on that address is reached by pods the way the metadata
// services are. The benchmark puts its fast upstream stand-in there. It
// changes only the sandbox's own namespaces; Close removes it with them.
func (s *Sandbox) AddCloudAddress(ctx context.Context, addr netip.Addr) error {
	addr = addr.Unmap()
	if !addr.IsValid() {
		return fmt.Errorf("adding a cloud address: invalid address")
	}
	via := CloudIP
	if addr.Is6() {
		via = CloudIPv6
	}
	if err := ipBatch(ctx, s.cloudNetns(), loAddr(addr)); err != nil {
		return fmt.Errorf("adding %s to the cloud namespace: %w", addr, err)
	}
	if err := ipBatch(ctx, s.nodeNetns(), fmt.Sprintf("route add %s/%d via %s", addr, prefixLen(addr), via)); err != nil {
		return fmt.Errorf("routing %s from the node: %w", addr, err)
	}
	return nil
}

// loAddr is the ip command that puts a on the loopback device. IPv6 ones
// skip duplicate address detection, so a service started right after can
// bind them (a tentative address refuses bind with "cannot assign").
func loAddr(a netip.Addr) string {
	if a.Is6() {
		return fmt.Sprintf("addr add %s/%d dev lo nodad", a, prefixLen(a))
	}
	return fmt.Sprintf("addr add %s/%d dev lo", a, prefixLen(a))
}
