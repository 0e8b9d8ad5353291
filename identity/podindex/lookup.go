package podindex

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"metaguard.dev/metaguard/identity"
)

// state is what the index knows about one address at one moment.
type state int

const (
	stAbsent    state = iota // no live pod claims it
	stFound                  // exactly one live pod, and its namespace is known
	stAmbiguous              // two or more live pods claim it
	// stNSPending: one pod claims it, but its namespace has not been seen yet
	// (the two informers are separate watches). Answering without namespace
	// labels could let a namespaceSelector with NotIn or DoesNotExist match
	// a namespace it was written to exclude, so the lookup waits instead.
	stNSPending
)

// Lookup returns the live pod on this node that owns addr. An address no pod
// owns is waited for up to Options.Wait (and no longer than ctx allows), then
// answered identity.ErrNotFound; an address two live pods claim is answered
// identity.ErrAmbiguous at once. It never calls the API server.
//
// Found answers do not allocate: the returned maps are the cache's own and
// must not be modified.
func (x *Index) Lookup(ctx context.Context, addr netip.Addr) (identity.Identity, error) {
	// A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d, and the
	// index holds the plain form.
	addr = addr.Unmap().WithZone("")

	x.mu.RLock()
	id, st := x.resolveLocked(addr)
	x.mu.RUnlock()
	switch st {
	case stFound:
		x.metrics.found.Inc()
		return id, nil
	case stAmbiguous:
		return x.answerAmbiguous(addr)
	case stAbsent:
		if x.knownAbsent(addr) {
			x.metrics.unknown.Inc()
			return identity.Identity{}, identity.ErrNotFound
		}
	}
	return x.wait(ctx, addr)
}

// resolveLocked reads the index; the caller holds x.mu for reading or writing.
func (x *Index) resolveLocked(addr netip.Addr) (identity.Identity, state) {
	claims := live(x.byIP[addr])
	switch {
	case len(claims) == 0:
		return identity.Identity{}, stAbsent
	case len(claims) > 1:
		return identity.Identity{}, stAmbiguous
	}
	// Namespace labels are joined here, not when the pod is indexed, so a
	// namespace relabel applies to the next request of every pod in it.
	nsLabels, ok := x.nsLabels[claims[0].id.Namespace]
	if !ok {
		return identity.Identity{}, stNSPending
	}
	id := claims[0].id
	id.NamespaceLabels = nsLabels
	return id, stFound
}

// live drops the claims of pods past their deletion deadline. It returns
// claims itself, without a clock read or an allocation, when no claimant
// is being deleted: the common case on the request path.
func live(claims []*podEntry) []*podEntry {
	deleting := false
	for _, e := range claims {
		deleting = deleting || !e.gone.IsZero()
	}
	if !deleting {
		return claims
	}
	now := time.Now()
	out := make([]*podEntry, 0, len(claims))
	for _, e := range claims {
		if e.gone.IsZero() || now.Before(e.gone) {
			out = append(out, e)
		}
	}
	return out
}

// knownAbsent reports whether addr stayed unknown for a full wait recently.
func (x *Index) knownAbsent(addr netip.Addr) bool {
	expires, ok := x.negative.Get(addr)
	if !ok {
		return false
	}
	if time.Now().Before(expires) {
		return true
	}
	x.negative.Remove(addr)
	return false
}

// wait blocks until the index answers for addr, the wait runs out, or ctx
// is done. It never polls: every index change closes x.changed.
func (x *Index) wait(ctx context.Context, addr netip.Addr) (identity.Identity, error) {
	if x.opts.Wait <= 0 {
		return x.giveUp(ctx, addr)
	}
	timer := time.NewTimer(x.opts.Wait)
	defer timer.Stop()
	for {
		x.mu.Lock()
		id, st := x.resolveLocked(addr)
		if st == stFound || st == stAmbiguous {
			x.mu.Unlock()
			return x.answerAfterWait(addr, id, st)
		}
		if x.changed == nil {
			x.changed = make(chan struct{})
		}
		changed := x.changed
		x.mu.Unlock()

		select {
		case <-changed:
		case <-timer.C:
			return x.giveUp(ctx, addr)
		case <-ctx.Done():
			return x.giveUp(ctx, addr)
		}
	}
}

// giveUp looks once more (the event and the timer may have raced) and then
// answers unknown, remembering addr as nobody's if the whole wait was spent.
func (x *Index) giveUp(ctx context.Context, addr netip.Addr) (identity.Identity, error) {
	cause := context.Cause(ctx)
	x.mu.Lock()
	id, st := x.resolveLocked(addr)
	if st == stAbsent && cause == nil {
		// Under x.mu, so a pod indexed right now either is seen above or
		// removes this entry after us; never a stale "nobody's".
		x.negative.Add(addr, time.Now().Add(x.opts.NegativeTTL))
	}
	x.mu.Unlock()
	if st == stFound || st == stAmbiguous {
		return x.answerAfterWait(addr, id, st)
	}
	x.metrics.unknown.Inc()
	if cause != nil {
		return identity.Identity{}, fmt.Errorf("%w: %w", identity.ErrNotFound, cause)
	}
	return identity.Identity{}, identity.ErrNotFound
}

func (x *Index) answerAfterWait(addr netip.Addr, id identity.Identity, st state) (identity.Identity, error) {
	if st == stAmbiguous {
		return x.answerAmbiguous(addr)
	}
	x.metrics.waited.Inc()
	return id, nil
}

// answerAmbiguous names the claimants, so the operator reading the deny can
// see which pod's end the cluster has not reported yet.
func (x *Index) answerAmbiguous(addr netip.Addr) (identity.Identity, error) {
	x.metrics.ambiguous.Inc()
	x.mu.RLock()
	claims := live(x.byIP[addr])
	names := make([]string, 0, len(claims))
	for _, e := range claims {
		names = append(names, e.key)
	}
	x.mu.RUnlock()
	return identity.Identity{}, fmt.Errorf("%s claimed by %s: %w", addr, strings.Join(names, ", "), identity.ErrAmbiguous)
}
