package redirect

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestNewRefusesClearly(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		sys     *fakeSystem
		wantErr string
	}{
		{"a loopback host IP, which would need route_localnet", Config{HostIPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}, nil, "loopback"},
		{"two IPv4 host IPs", Config{HostIPs: []netip.Addr{host4, netip.MustParseAddr("10.0.0.11")}}, nil, "at most one per family"},
		{"no host IP", Config{}, nil, "no host IP"},
		{"an unknown iptables mode", Config{HostIPs: []netip.Addr{host4}, Mode: "iptables"}, nil, `mode "iptables"`},
		{"a missing ip6tables binary for an IPv6 host IP", Config{HostIPs: []netip.Addr{host4, host6}, Mode: ModeNFT}, func() *fakeSystem {
			s := newFakeSystem(backendNFT)
			delete(s.tables[backendNFT], ipv6)
			return s
		}(), "ip6tables-nft is needed for the ipv6 host IP"},
		{"no iptables binary at all", Config{HostIPs: []netip.Addr{host4}}, newFakeSystem(), "neither iptables-nft nor iptables-legacy"},
		{"a kernel without the nat table", Config{HostIPs: []netip.Addr{host4}, Mode: ModeLegacy}, func() *fakeSystem {
			s := newFakeSystem(backendLegacy)
			s.tables[backendLegacy][ipv4].failOn = func(op string) error {
				return &fakeErr{3, "can't initialize iptables table `nat': Table does not exist"}
			}
			return s
		}(), "cannot read the nat table"},
	}
	for _, tt := range tests {
		t.Run("New refuses "+tt.name, func(t *testing.T) {
			tt.cfg.ListenPort = 8181
			if tt.sys == nil {
				tt.sys = newFakeSystem(backendNFT)
			}
			tt.cfg.sys = tt.sys.system()
			_, err := New(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("got %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
	t.Run("New writes nothing to the kernel", func(t *testing.T) {
		s := newFakeSystem(backendNFT)
		if _, err := New(Config{HostIPs: []netip.Addr{host4}, ListenPort: 8181, sys: s.system()}); err != nil {
			t.Fatal(err)
		}
		for _, f := range families {
			if w := s.tables[backendNFT][f].writes(); len(w) != 0 {
				t.Errorf("New wrote %q to %s", w, f)
			}
		}
	})
	t.Run("New refuses a Registerer that already has the metrics", func(t *testing.T) {
		reg := prometheus.NewRegistry()
		cfg := Config{HostIPs: []netip.Addr{host4}, ListenPort: 8181, Registerer: reg, sys: newFakeSystem(backendNFT).system()}
		if _, err := New(cfg); err != nil {
			t.Fatal(err)
		}
		_, err := New(cfg)
		var already prometheus.AlreadyRegisteredError
		if !errors.As(err, &already) {
			t.Fatalf("got %v, want AlreadyRegisteredError", err)
		}
	})
}
