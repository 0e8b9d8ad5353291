package policy

import (
	"errors"
	"io"
	"log/slog"
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
		if v := testutil.ToFloat64(s.info.WithLabelValues("2", "audit")); v != 1 {
			t.Errorf("policy_info{generation=2,mode=audit} = %v", v)
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
		if v := testutil.ToFloat64(s.reloads.WithLabelValues("success")); v != 2 {
			t.Errorf("reloads{success} = %v, want 2", v)
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

func TestNewStoreRefusesAnInvalidPolicy(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.yaml")
	if err := os.WriteFile(path, []byte(brokenDoc), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := NewStore(path, slog.New(slog.NewTextHandler(io.Discard, nil)), nil); err == nil {
		t.Fatal("NewStore accepted an invalid policy")
	}
}
