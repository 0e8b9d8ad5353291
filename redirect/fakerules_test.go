package redirect

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
)

// fakeRules is an in-memory routing-policy database holding metaguard's
// rules and others'. It refuses duplicates and missing deletions as the
// kernel does (EEXIST, ENOENT), records every write, and can evaluate
// itself for one packet the way the kernel walks rules, so that tests can
// check what traffic a half-done sync would refuse.
type fakeRules struct {
	mu          sync.Mutex
	rules       map[family][]fakeRule
	unsupported map[family]bool
	ops         []string
	failOn      func(op string) error
	afterOp     func(fr *fakeRules) // runs, unlocked, after each write
}

// fakeRule is one kernel rule: metaguard's, or another's at its priority
// (foreign), which only counts.
type fakeRule struct {
	r        routeRule
	priority int
	foreign  bool
}

func newFakeRules() *fakeRules {
	return &fakeRules{rules: map[family][]fakeRule{}, unsupported: map[family]bool{}}
}

func (fr *fakeRules) begin(op string) error {
	fr.ops = append(fr.ops, op)
	if fr.failOn != nil {
		return fr.failOn(op)
	}
	return nil
}

func (fr *fakeRules) list(f family) ([]routeRule, int, error) {
	fr.mu.Lock()
	defer fr.mu.Unlock()
	if err := fr.begin("list " + f.String()); err != nil {
		return nil, 0, err
	}
	if fr.unsupported[f] {
		return nil, 0, fmt.Errorf("listing: %w", errFamilyUnsupported)
	}
	var ours []routeRule
	foreign := 0
	for _, k := range fr.sorted(f) {
		if k.foreign {
			foreign++
			continue
		}
		ours = append(ours, k.r)
	}
	return ours, foreign, nil
}

// sorted is the family's rules in kernel order: by priority, then by
// insertion. The caller holds fr.mu.
func (fr *fakeRules) sorted(f family) []fakeRule {
	out := slices.Clone(fr.rules[f])
	slices.SortStableFunc(out, func(a, b fakeRule) int { return a.priority - b.priority })
	return out
}

func (fr *fakeRules) add(r routeRule) error {
	fr.mu.Lock()
	err := fr.begin("add " + r.String())
	if err == nil {
		if slices.ContainsFunc(fr.rules[r.family], func(k fakeRule) bool { return !k.foreign && k.r == r }) {
			err = syscall.EEXIST
		} else {
			fr.rules[r.family] = append(fr.rules[r.family], fakeRule{r: r, priority: r.priority()})
		}
	}
	fr.mu.Unlock()
	fr.after()
	return err
}

func (fr *fakeRules) del(r routeRule) error {
	fr.mu.Lock()
	err := fr.begin("del " + r.String())
	if err == nil {
		// Like netlinkRules, a rule already gone is not an error.
		if i := slices.IndexFunc(fr.rules[r.family], func(k fakeRule) bool { return !k.foreign && k.r == r }); i >= 0 {
			fr.rules[r.family] = slices.Delete(fr.rules[r.family], i, i+1)
		}
	}
	fr.mu.Unlock()
	fr.after()
	return err
}

func (fr *fakeRules) after() {
	if fr.afterOp != nil {
		fr.afterOp(fr)
	}
}

// put appends a rule directly, as another agent (or a duplicate) would.
func (fr *fakeRules) put(k fakeRule) {
	fr.mu.Lock()
	defer fr.mu.Unlock()
	if k.priority == 0 {
		k.priority = k.r.priority()
	}
	fr.rules[k.r.family] = append(fr.rules[k.r.family], k)
}

// remove deletes metaguard's rules that match, as another agent's `ip rule
// del` would.
func (fr *fakeRules) remove(f family, match func(routeRule) bool) {
	fr.mu.Lock()
	defer fr.mu.Unlock()
	fr.rules[f] = slices.DeleteFunc(fr.rules[f], func(k fakeRule) bool { return !k.foreign && match(k.r) })
}

func (fr *fakeRules) dump(f family) []string {
	fr.mu.Lock()
	defer fr.mu.Unlock()
	var out []string
	for _, k := range fr.sorted(f) {
		if k.foreign {
			out = append(out, fmt.Sprintf("%d: foreign", k.priority))
			continue
		}
		out = append(out, k.r.String())
	}
	return out
}

func (fr *fakeRules) writes() []string {
	fr.mu.Lock()
	defer fr.mu.Unlock()
	return slices.DeleteFunc(slices.Clone(fr.ops), func(op string) bool { return strings.HasPrefix(op, "list") })
}

func (fr *fakeRules) resetOps() {
	fr.mu.Lock()
	fr.ops = nil
	fr.mu.Unlock()
}

// refuses evaluates the family's rules for a TCP packet to dst, locally
// generated or forwarded, as the kernel does: in order, a goto jumps to the
// first rule at its target priority or, when there is none, falls through
// to the next rule. Foreign rules are taken to match nothing.
func (fr *fakeRules) refuses(dst netip.AddrPort, local bool) bool {
	fr.mu.Lock()
	defer fr.mu.Unlock()
	rules := fr.sorted(familyOf(dst.Addr()))
	for i := 0; i < len(rules); i++ {
		k := rules[i]
		if k.foreign {
			continue
		}
		r := k.r
		matches := r.action == ruleNop || (r.dst.Contains(dst.Addr()) && r.port == dst.Port() && (r.action != ruleSkipLocal || local))
		if !matches {
			continue
		}
		switch r.action {
		case ruleRefuse:
			return true
		case ruleSkipLocal:
			if j := slices.IndexFunc(rules, func(t fakeRule) bool { return t.priority == rulePriorityTarget }); j >= 0 {
				i = j - 1 // the loop's i++ lands on the target
			}
		}
	}
	return false
}

// fakeWatcher is a changeWatcher a test fires by hand.
type fakeWatcher struct {
	fire chan struct{}
	subs atomic.Int32 // subscriptions made
}

func newFakeWatcher() *fakeWatcher { return &fakeWatcher{fire: make(chan struct{})} }

func (*fakeWatcher) String() string { return "fake" }

func (w *fakeWatcher) watch(ctx context.Context, changed func()) error {
	w.subs.Add(1)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-w.fire:
			changed()
		}
	}
}
