package policy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Store holds the policy in force and reloads it from its file.
//
// Reloading polls the file's content rather than watching inotify events:
// a ConfigMap volume swaps a "..data" symlink, which inotify reports on
// the directory and not on the file a process opened, and an editor's
// rename-and-replace has the same effect. Reading a few kilobytes once a
// second sees every kind of change, and never misses one.
//
// A store never starts empty: while no valid policy has been read (a fresh
// node whose ConfigMap is broken or not mounted yet) it holds FailClosed's
// placeholder, which intercepts the well-known metadata endpoints and
// allows nothing, and it takes up the first valid policy the file holds.
type Store struct {
	path string
	log  *slog.Logger

	cur atomic.Pointer[Policy]
	gen atomic.Uint64

	mu        sync.Mutex // serialises reloads and guards what follows
	sum       [sha256.Size]byte
	listeners []func(*Policy) error
	infoLabel []string // label values of the policy_info series in force
	readErr   string   // the last read error, reported once per streak

	reloads  *prometheus.CounterVec
	info     *prometheus.GaugeVec
	lastGood prometheus.Gauge
}

// NewStore loads the policy at path. A policy that cannot be read or is
// invalid is logged, counted and leaves the store failing closed (Current
// is FailClosed's placeholder) until Reload finds a valid one; NewStore
// itself fails only for metrics it cannot register.
func NewStore(path string, log *slog.Logger, reg prometheus.Registerer) (*Store, error) {
	s := &Store{
		path: path,
		log:  log,
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "metaguard_policy_reloads_total",
			Help: "Policy loads by result (success, error). A failed reload keeps the previous policy in force.",
		}, []string{"result"}),
		info: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "metaguard_policy_info",
			Help: "The policy in force: its generation (1 for the first valid policy, +1 per applied reload; 0 while failing closed), mode and content hash (sha256 prefix of the file).",
		}, []string{"generation", "mode", "hash"}),
		lastGood: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "metaguard_policy_last_reload_successful",
			Help: "1 when the policy file last read was valid and is in force; 0 when it was refused (the previous policy, or none while failing closed, stays in force).",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{s.reloads, s.info, s.lastGood} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("registering policy metrics: %w", err)
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	data, err := readPolicyFile(path)
	s.sum = sha256.Sum256(data)
	var p *Policy
	if err == nil {
		p, err = Parse(path, data)
	}
	if err != nil {
		s.reloads.WithLabelValues("error").Inc()
		s.log.Error("no valid policy: failing closed, every request is denied until a valid policy is mounted", "path", path, "error", err)
		s.applyLocked(FailClosed(err, data), data)
		return s, nil
	}
	s.reloads.WithLabelValues("success").Inc()
	s.applyLocked(p, data)
	return s, nil
}

func readPolicyFile(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading policy: %w", err)
	}
	if len(data) > maxPolicyBytes {
		return nil, fmt.Errorf("reading policy %s: larger than %d bytes", path, maxPolicyBytes)
	}
	return data, nil
}

// Current returns the policy in force. The result is immutable.
func (s *Store) Current() *Policy { return s.cur.Load() }

// Generation counts applied valid policies, starting at 1; it is 0 while
// the store fails closed.
func (s *Store) Generation() uint64 { return s.gen.Load() }

// OnChange registers f to be called with every new policy (valid, or a
// fail-closed placeholder with different endpoints) before it is applied,
// in the reloading goroutine; f must not block for long. An error from f
// rejects the policy like a validation error does: it lets a part that
// must follow the policy (the kernel's redirect rules) refuse one it
// cannot follow, rather than have the proxy and the kernel disagree about
// what is intercepted.
func (s *Store) OnChange(f func(*Policy) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.listeners = append(s.listeners, f)
}

// Reload re-reads the file and applies it when its content changed and it
// is valid. A read or validation error leaves the policy in force as it
// was, and is returned, logged and counted; while failing closed, the
// placeholder is rebuilt to name the new error and the endpoints the new
// content still names.
func (s *Store) Reload() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	data, err := readPolicyFile(s.path)
	if err != nil && err.Error() == s.readErr {
		return err // reported when it began
	}
	s.readErr = ""
	if err != nil {
		s.readErr = err.Error()
	}
	sum := sha256.Sum256(data)
	if err == nil && bytes.Equal(sum[:], s.sum[:]) {
		return nil
	}
	if err == nil {
		var p *Policy
		if p, err = Parse(s.path, data); err == nil {
			err = s.notifyLocked(p)
			if err == nil {
				s.sum = sum
				s.reloads.WithLabelValues("success").Inc()
				s.applyLocked(p, data)
				s.log.Info("policy loaded", "generation", s.gen.Load(), "mode", p.Mode, "rules", len(p.rules), "endpoints", len(p.endpoints))
				return nil
			}
			err = fmt.Errorf("policy %s refused: %w", s.path, err)
		}
	}
	// Remember the bad content so that it is reported once, not once a
	// second until somebody fixes it.
	s.sum = sum
	s.reloads.WithLabelValues("error").Inc()
	s.lastGood.Set(0)
	if s.Current().Invalid() != nil {
		if fc := FailClosed(err, data); s.notifyLocked(fc) == nil {
			s.applyLocked(fc, data)
		}
		s.log.Error("no valid policy: still failing closed", "error", err)
		return err
	}
	s.log.Error("policy reload failed; the previous policy stays in force", "generation", s.gen.Load(), "error", err)
	return err
}

func (s *Store) notifyLocked(p *Policy) error {
	for _, f := range s.listeners {
		if err := f(p); err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) applyLocked(p *Policy, data []byte) {
	gen := s.gen.Load()
	if p.Invalid() == nil {
		gen = s.gen.Add(1)
		s.lastGood.Set(1)
	} else {
		s.lastGood.Set(0)
	}
	s.cur.Store(p)
	if s.infoLabel != nil {
		s.info.DeleteLabelValues(s.infoLabel...)
	}
	sum := sha256.Sum256(data)
	s.infoLabel = []string{strconv.FormatUint(gen, 10), string(p.Mode), hex.EncodeToString(sum[:8])}
	s.info.WithLabelValues(s.infoLabel...).Set(1)
}

// Watch reloads the policy every interval until ctx is done.
func (s *Store) Watch(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_ = s.Reload() // logged and counted by Reload
		}
	}
}
