package policy

import (
	"bytes"
	"context"
	"crypto/sha256"
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
type Store struct {
	path string
	log  *slog.Logger

	cur atomic.Pointer[Policy]
	gen atomic.Uint64

	mu        sync.Mutex // serialises reloads and guards what follows
	sum       [sha256.Size]byte
	listeners []func(*Policy) error
	infoGen   string
	infoMode  string

	reloads *prometheus.CounterVec
	info    *prometheus.GaugeVec
}

// NewStore loads the policy at path. An invalid policy at start-up is an
// error: there is no older policy to keep in force.
func NewStore(path string, log *slog.Logger, reg prometheus.Registerer) (*Store, error) {
	s := &Store{
		path: path,
		log:  log,
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "metaguard_policy_reloads_total",
			Help: "Policy reloads by result (success, error). A failed reload keeps the previous policy in force.",
		}, []string{"result"}),
		info: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "metaguard_policy_info",
			Help: "The policy in force: its generation (1 at start, +1 per applied reload) and mode.",
		}, []string{"generation", "mode"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{s.reloads, s.info} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("registering policy metrics: %w", err)
			}
		}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading policy: %w", err)
	}
	p, err := Parse(path, data)
	if err != nil {
		return nil, err
	}
	s.sum = sha256.Sum256(data)
	s.apply(p)
	return s, nil
}

// Current returns the policy in force. The result is immutable.
func (s *Store) Current() *Policy { return s.cur.Load() }

// Generation counts applied policies, starting at 1.
func (s *Store) Generation() uint64 { return s.gen.Load() }

// OnChange registers f to be called with every valid new policy before it
// is applied, in the reloading goroutine; f must not block for long. An
// error from f rejects the policy like a validation error does: it lets a
// part that must follow the policy (the kernel's redirect rules) refuse
// one it cannot follow, rather than have the proxy and the kernel
// disagree about what is intercepted.
func (s *Store) OnChange(f func(*Policy) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.listeners = append(s.listeners, f)
}

// Reload re-reads the file and applies it when its content changed and it
// is valid. A read or validation error leaves the policy in force as it
// was, and is returned, logged and counted.
func (s *Store) Reload() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	data, err := os.ReadFile(s.path)
	if err != nil {
		return s.failed(fmt.Errorf("reading policy: %w", err))
	}
	sum := sha256.Sum256(data)
	if bytes.Equal(sum[:], s.sum[:]) {
		return nil
	}
	p, err := Parse(s.path, data)
	if err != nil {
		// Remember the bad content so that it is reported once, not once
		// a second until somebody fixes it.
		s.sum = sum
		return s.failed(err)
	}
	s.sum = sum
	for _, f := range s.listeners {
		if err := f(p); err != nil {
			return s.failed(fmt.Errorf("policy %s refused: %w", s.path, err))
		}
	}
	s.apply(p)
	s.reloads.WithLabelValues("success").Inc()
	s.log.Info("policy reloaded", "generation", s.gen.Load(), "mode", p.Mode, "rules", len(p.rules), "endpoints", len(p.endpoints))
	return nil
}

func (s *Store) failed(err error) error {
	s.reloads.WithLabelValues("error").Inc()
	s.log.Error("policy reload failed; the previous policy stays in force", "generation", s.gen.Load(), "error", err)
	return err
}

func (s *Store) apply(p *Policy) {
	gen := s.gen.Add(1)
	s.cur.Store(p)
	if s.infoGen != "" {
		s.info.DeleteLabelValues(s.infoGen, s.infoMode)
	}
	s.infoGen, s.infoMode = strconv.FormatUint(gen, 10), string(p.Mode)
	s.info.WithLabelValues(s.infoGen, s.infoMode).Set(1)
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
