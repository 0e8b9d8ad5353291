package audit

import (
	"net/netip"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/time/rate"
)

// maxBudgetSources bounds the sources whose denial budgets are kept: far
// above the pod addresses a node has. A source pushed out writes its
// summary at the next interval and starts afresh.
const maxBudgetSources = 4096

// denialBudget gives each source address a token bucket for denial lines.
// Counting every denial of a source, not only identical ones, is the point:
// a flood that varies its paths would otherwise escape a per-line key and
// still rotate every other pod's lines out of the node's log window.
type denialBudget struct {
	rate  rate.Limit
	burst int

	mu      sync.Mutex
	sources *lru.Cache[netip.Addr, *sourceBudget]
	evicted []Record // summaries of sources pushed out, written at the next drain
}

type sourceBudget struct {
	lim *rate.Limiter
	// who is the last suppressed line, for the summary's identity fields.
	who        Record
	suppressed map[Reason]int
}

func newDenialBudget(perSecond float64, burst int) *denialBudget {
	b := &denialBudget{rate: rate.Limit(perSecond), burst: burst}
	c, err := lru.NewWithEvict(maxBudgetSources, func(_ netip.Addr, s *sourceBudget) {
		if len(s.suppressed) > 0 {
			b.evicted = append(b.evicted, s.summary(time.Now()))
		}
	})
	if err != nil {
		panic(err) // only for a non-positive size
	}
	b.sources = c
	return b
}

// admit reports whether r may be written; if not, it is counted in its
// source's next summary.
func (b *denialBudget) admit(r *Record, now time.Time) bool {
	key := r.SrcIP.Unmap()
	b.mu.Lock()
	defer b.mu.Unlock()
	s, ok := b.sources.Get(key)
	if !ok {
		s = &sourceBudget{lim: rate.NewLimiter(b.rate, b.burst)}
		b.sources.Add(key, s)
	}
	if s.lim.AllowN(now, 1) {
		return true
	}
	if s.suppressed == nil {
		s.suppressed = map[Reason]int{}
	}
	s.suppressed[r.Reason]++
	s.who = Record{SrcIP: r.SrcIP, Pod: r.Pod, Namespace: r.Namespace, PodUID: r.PodUID,
		ServiceAccount: r.ServiceAccount, Labels: r.Labels, Endpoint: r.Endpoint}
	return false
}

// drain returns one summary per source with suppressed lines and resets
// their counts.
func (b *denialBudget) drain(now time.Time) []Record {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := b.evicted
	b.evicted = nil
	for _, key := range b.sources.Keys() {
		s, ok := b.sources.Peek(key)
		if !ok || len(s.suppressed) == 0 {
			continue
		}
		out = append(out, s.summary(now))
		s.suppressed = nil
	}
	return out
}

func (s *sourceBudget) summary(now time.Time) Record {
	r := s.who
	r.Time = now
	r.Decision = DecisionDeny
	r.Reason = ReasonDenialsSuppressed
	r.Suppressed = s.suppressed
	return r
}
