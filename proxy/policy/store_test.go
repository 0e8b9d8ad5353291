package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

const (
	enforceDoc = "apiVersion: metaguard.dev/v1alpha1\nkind: Policy\nendpoints: [{name: aws, address: \"169.254.169.254:80\", flavor: aws}]\n"
	auditDoc   = "apiVersion: metaguard.dev/v1alpha1\nkind: Policy\nmode: audit\nendpoints: [{name: aws, address: \"169.254.169.254:80\", flavor: aws}]\n"
	brokenDoc  = "apiVersion: metaguard.dev/v1alpha1\nkind: Policy\nendpoints: [{name: aws, address: \"nowhere\", flavor: aws}]\n"
)

// writeConfigMapVolume lays out a directory the way the kubelet does for a
// ConfigMap volume: policy.yaml -> ..data/policy.yaml, ..data -> a
// timestamped directory, updated by swapping the ..data symlink.
func writeConfigMapVolume(t *testing.T, dir, version, content string) {
	t.Helper()
	ts := filepath.Join(dir, "..2026_"+version)
	if err := os.Mkdir(ts, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ts, "policy.yaml"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "policy.yaml")); os.IsNotExist(err) {
		if err := os.Symlink("..data/policy.yaml", filepath.Join(dir, "policy.yaml")); err != nil {
			t.Fatal(err)
		}
	}
}

func TestStoreFollowsConfigMapSymlinkSwapsAndKeepsTheGoodPolicy(t *testing.T) {
	dir := t.TempDir()
	writeConfigMapVolume(t, dir, "1", enforceDoc)
	reg := prometheus.NewRegistry()
	s, err := NewStore(filepath.Join(dir, "policy.yaml"), slog.New(slog.NewTextHandler(io.Discard, nil)), reg)
	if err != nil {
		t.Fatal(err)
	}
	changed := 0
	s.OnChange(func(*Policy) error { changed++; return nil })
	if s.Current().Mode != ModeEnforce || s.Generation() != 1 {
		t.Fatalf("initial: mode %s generation %d", s.Current().Mode, s.Generation())
	}

	t.Run("an unchanged file is not re-applied", func(t *testing.T) {
		if err := s.Reload(); err != nil || s.Generation() != 1 || changed != 0 {
			t.Fatalf("err %v generation %d changed %d", err, s.Generation(), changed)
		}
	})
	t.Run("a symlink swap to a valid policy applies it", func(t *testing.T) {
		writeConfigMapVolume(t, dir, "2", auditDoc)
		if err := s.Reload(); err != nil {
			t.Fatal(err)
		}
		if s.Current().Mode != ModeAudit || s.Generation() != 2 || changed != 1 {
			t.Fatalf("mode %s generation %d changed %d", s.Current().Mode, s.Generation(), changed)
		}
		if v := testutil.ToFloat64(s.info.WithLabelValues("2", "audit", hashOf(auditDoc))); v != 1 {
			t.Errorf("policy_info{generation=2,mode=audit,hash} = %v", v)
		}
		if n := testutil.CollectAndCount(s.info); n != 1 {
			t.Errorf("policy_info has %d series, want only the current one", n)
		}
	})
	t.Run("a broken policy never replaces the good one", func(t *testing.T) {
		writeConfigMapVolume(t, dir, "3", brokenDoc)
		if err := s.Reload(); err == nil {
			t.Fatal("Reload of a broken policy succeeded")
		}
		if s.Current().Mode != ModeAudit || s.Generation() != 2 || changed != 1 {
			t.Fatalf("the old policy must stay: mode %s generation %d", s.Current().Mode, s.Generation())
		}
		if v := testutil.ToFloat64(s.reloads.WithLabelValues("error")); v != 1 {
			t.Errorf("reloads{error} = %v, want 1", v)
		}
		if v := testutil.ToFloat64(s.lastGood); v != 0 {
			t.Errorf("last_reload_successful = %v after a broken file, want 0", v)
		}
		// Reported once, not on every poll.
		_ = s.Reload()
		if v := testutil.ToFloat64(s.reloads.WithLabelValues("error")); v != 1 {
			t.Errorf("reloads{error} after a second poll = %v, want 1", v)
		}
	})
	t.Run("a fixed file then applies", func(t *testing.T) {
		writeConfigMapVolume(t, dir, "4", enforceDoc)
		if err := s.Reload(); err != nil {
			t.Fatal(err)
		}
		if s.Current().Mode != ModeEnforce || s.Generation() != 3 {
			t.Fatalf("mode %s generation %d", s.Current().Mode, s.Generation())
		}
		if v := testutil.ToFloat64(s.reloads.WithLabelValues("success")); v != 3 {
			t.Errorf("reloads{success} = %v, want 3 (start, two reloads)", v)
		}
		if v := testutil.ToFloat64(s.lastGood); v != 1 {
			t.Errorf("last_reload_successful = %v, want 1", v)
		}
	})
	t.Run("a policy a listener refuses is not applied", func(t *testing.T) {
		s.OnChange(func(p *Policy) error {
			if p.Mode == ModeAudit {
				return errors.New("no audit today")
			}
			return nil
		})
		writeConfigMapVolume(t, dir, "5", auditDoc)
		if err := s.Reload(); err == nil || !strings.Contains(err.Error(), "no audit today") {
			t.Fatalf("Reload = %v, want the listener's refusal", err)
		}
		if s.Current().Mode != ModeEnforce || s.Generation() != 3 {
			t.Fatalf("mode %s generation %d: the refused policy was applied", s.Current().Mode, s.Generation())
		}
	})
	t.Run("a missing file keeps the policy", func(t *testing.T) {
		if err := os.Remove(filepath.Join(dir, "policy.yaml")); err != nil {
			t.Fatal(err)
		}
		if err := s.Reload(); err == nil || s.Current() == nil || s.Generation() != 3 {
			t.Fatalf("err %v generation %d", err, s.Generation())
		}
	})
}

func hashOf(doc string) string {
	sum := sha256.Sum256([]byte(doc))
	return hex.EncodeToString(sum[:8])
}

func TestNewStoreFailsClosedOnAnInvalidPolicyAndTakesUpTheFirstValidOne(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.yaml")
	broken := "apiVersion: metaguard.dev/v1alpha1\nkind: Policy\nendpoints: [{name: imds, address: \"169.254.169.254:80\", flavor: aws}, {name: wire, address: \"168.63.129.99:80\", flavor: generic}]\ndefaultAction: maybe\n"
	if err := os.WriteFile(path, []byte(broken), 0o644); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	s, err := NewStore(path, slog.New(slog.DiscardHandler), reg)
	if err != nil {
		t.Fatalf("NewStore: %v", err)
	}
	p := s.Current()
	if p.Invalid() == nil || !strings.Contains(p.Invalid().Error(), "defaultAction") {
		t.Fatalf("Current().Invalid() = %v, want the validation error", p.Invalid())
	}
	for _, addr := range []string{"169.254.169.254:80", "[fd00:ec2::254]:80", "[fd20:ce::254]:80", "168.63.129.16:80", "168.63.129.99:80"} {
		if _, ok := p.EndpointFor(netip.MustParseAddrPort(addr)); !ok {
			t.Errorf("the fail-closed policy does not intercept %s", addr)
		}
	}
	if v := testutil.ToFloat64(s.lastGood); v != 0 || s.Generation() != 0 {
		t.Errorf("last_reload_successful = %v generation %d, want 0 and 0", v, s.Generation())
	}
	if err := s.Reload(); err != nil {
		t.Errorf("an unchanged broken file is reported once, got %v", err)
	}

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(); err == nil || s.Current().Invalid() == nil {
		t.Fatalf("a missing file: err %v, still failing closed = %v", err, s.Current().Invalid() != nil)
	}
	if _, ok := s.Current().EndpointFor(netip.MustParseAddrPort("169.254.169.254:80")); !ok {
		t.Error("a missing file dropped the well-known endpoints")
	}

	var seen []*Policy
	s.OnChange(func(p *Policy) error { seen = append(seen, p); return nil })
	if err := os.WriteFile(path, []byte(enforceDoc), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if s.Current().Invalid() != nil || s.Generation() != 1 || len(seen) != 1 || seen[0] != s.Current() {
		t.Fatalf("the first valid policy: invalid=%v generation %d listeners %d", s.Current().Invalid(), s.Generation(), len(seen))
	}
	if v := testutil.ToFloat64(s.lastGood); v != 1 {
		t.Errorf("last_reload_successful = %v, want 1", v)
	}
}
