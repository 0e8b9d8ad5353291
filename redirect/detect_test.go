package redirect

import (
	"net/netip"
	"strings"
	"testing"
)

func TestDetectBackend(t *testing.T) {
	tests := []struct {
		name       string
		backends   []backend
		setup      func(s *fakeSystem)
		want       backend
		wantReason string
	}{
		{
			name:     "a KUBE-IPTABLES-HINT chain in the nft mangle table picks nft even when legacy holds more rules",
			backends: []backend{backendNFT, backendLegacy},
			setup: func(s *fakeSystem) {
				s.tables[backendNFT][ipv4].run("-t mangle -N KUBE-IPTABLES-HINT")
				for range 3 {
					s.tables[backendLegacy][ipv4].run("-t filter -A INPUT -j ACCEPT")
				}
			},
			want: backendNFT, wantReason: "KUBE-IPTABLES-HINT",
		},
		{
			name:     "a KUBE-KUBELET-CANARY chain in the legacy ip6tables mangle table picks legacy",
			backends: []backend{backendNFT, backendLegacy},
			setup: func(s *fakeSystem) {
				s.tables[backendLegacy][ipv6].run("-t mangle -N KUBE-KUBELET-CANARY")
				s.tables[backendNFT][ipv4].run("-t filter -A INPUT -j ACCEPT")
			},
			want: backendLegacy, wantReason: "KUBE-KUBELET-CANARY",
		},
		{
			name:     "without hints the back end holding more rules wins",
			backends: []backend{backendNFT, backendLegacy},
			setup: func(s *fakeSystem) {
				s.tables[backendNFT][ipv4].run("-t filter -A INPUT -j ACCEPT")
				s.tables[backendLegacy][ipv4].run("-t nat -A POSTROUTING -j MASQUERADE")
				s.tables[backendLegacy][ipv6].run("-t nat -A POSTROUTING -j MASQUERADE")
			},
			want: backendLegacy, wantReason: "legacy holds 2 rules",
		},
		{
			name:     "metaguard's own jumps do not count, so a back end is not chosen because metaguard once wrote there",
			backends: []backend{backendNFT, backendLegacy},
			setup: func(s *fakeSystem) {
				l := s.tables[backendLegacy][ipv4]
				l.run("-t nat -N " + NATChain)
				l.run("-t nat -A PREROUTING -j " + NATChain)
				l.run("-t filter -N " + FilterChain)
				l.run("-t filter -A FORWARD -j " + FilterChain)
			},
			want: backendNFT, wantReason: "nft holds 0 rules",
		},
		{
			name:     "a fresh node picks nft",
			backends: []backend{backendNFT, backendLegacy},
			want:     backendNFT, wantReason: "nft holds 0 rules",
		},
		{
			name:     "only legacy binaries installed picks legacy",
			backends: []backend{backendLegacy},
			want:     backendLegacy, wantReason: "only the legacy",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newFakeSystem(tt.backends...)
			if tt.setup != nil {
				tt.setup(s)
			}
			got, reason, err := detectBackend(*s.system())
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want || !strings.Contains(reason, tt.wantReason) {
				t.Errorf("got %s (%s), want %s (%s)", got, reason, tt.want, tt.wantReason)
			}
		})
	}
}

func TestDetectBackendCreatesNoLegacyTables(t *testing.T) {
	s := newFakeSystem(backendNFT, backendLegacy)
	s.tables[backendLegacy][ipv4].run("-t filter -A INPUT -j ACCEPT")
	if _, _, err := detectBackend(*s.system()); err != nil {
		t.Fatal(err)
	}
	for f, ft := range s.tables[backendLegacy] {
		for table := range ft.touched {
			if f == ipv4 && table == "filter" {
				continue
			}
			t.Errorf("detection touched legacy %s table %s, which did not exist", f, table)
		}
	}
}

func TestKernelDetectsBackend(t *testing.T) {
	requireKernel(t)
	tests := []struct {
		name  string
		setup []string // commands run in the namespace first
		want  string
	}{
		{"kube-proxy's hint chain in the legacy mangle table picks legacy",
			[]string{"iptables-legacy -t mangle -N KUBE-IPTABLES-HINT"}, ModeLegacy},
		{"kubelet's canary chain in the nft mangle table picks nft",
			[]string{"ip6tables-nft -t mangle -N KUBE-KUBELET-CANARY", "iptables-legacy -t filter -A INPUT -j ACCEPT"}, ModeNFT},
		{"without hints, a CNI's legacy rules pick legacy",
			[]string{"iptables-legacy -t nat -A POSTROUTING -s 10.0.0.0/8 -j MASQUERADE"}, ModeLegacy},
		{"a fresh node picks nft", nil, ModeNFT},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ns, bin := newNamespace(t, "node"), t.TempDir()
			writeWrappers(t, bin, ns)
			for _, cmd := range tt.setup {
				mustRun(t, "nsenter", append([]string{"--net=/run/netns/" + ns}, strings.Fields(cmd)...)...)
			}
			var legacyBefore []string
			inNetns(t, ns, func() { legacyBefore, _ = procLegacyTables(ipv4) })

			rec, err := New(Config{HostIPs: []netip.Addr{netip.MustParseAddr(hostIP4)}, ListenPort: 8181, sys: nsSystem(bin, ns)})
			if err != nil {
				t.Fatal(err)
			}
			if rec.Backend() != tt.want {
				t.Errorf("picked %s, want %s", rec.Backend(), tt.want)
			}
			if tt.want == ModeNFT {
				var legacyAfter []string
				inNetns(t, ns, func() { legacyAfter, _ = procLegacyTables(ipv4) })
				if strings.Join(legacyAfter, " ") != strings.Join(legacyBefore, " ") {
					t.Errorf("detection created legacy tables: %v, before %v", legacyAfter, legacyBefore)
				}
			}
		})
	}
}
