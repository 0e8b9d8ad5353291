package proxy

import (
	"errors"
	"net/netip"
	"sync"
)

// errOverloaded means a request would take the proxy past one of its
// budgets; it is refused at once with 503 and Retry-After, never queued.
var errOverloaded = errors.New("proxy budget exhausted")

// shares is a budget (bytes, or things in flight) with a cap per source
// address, so that one pod can take at most its share and the rest stays
// for the others. Over either cap, acquire fails at once.
type shares struct {
	total, perSource int64

	mu    sync.Mutex
	used  int64
	bySrc map[netip.Addr]int64
}

func newShares(total, perSource int64) *shares {
	return &shares{total: total, perSource: min(perSource, total), bySrc: map[netip.Addr]int64{}}
}

func (s *shares) acquire(src netip.Addr, n int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.used+n > s.total || s.bySrc[src]+n > s.perSource {
		return false
	}
	s.used += n
	s.bySrc[src] += n
	return true
}

func (s *shares) release(src netip.Addr, n int64) {
	if n == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.used -= n
	if left := s.bySrc[src] - n; left > 0 {
		s.bySrc[src] = left
	} else {
		delete(s.bySrc, src)
	}
}

// inUse returns what is held in total and by src.
func (s *shares) inUse(src netip.Addr) (total, bySrc int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.used, s.bySrc[src]
}

// limits are the request path's budgets, all derived from one memory
// budget (Budget).
type limits struct {
	flight *shares // requests waiting on or streaming from an upstream
	polls  *shares // of those, GCP long polls, which hold on for minutes
	strip  *shares // bytes of upstream bodies held to be stripped
}

func newLimits(b Budget) *limits {
	return &limits{
		flight: newShares(int64(b.InFlight), int64(b.InFlightPerSource)),
		polls:  newShares(int64(b.LongPolls), int64(b.LongPollsPerSource)),
		strip:  newShares(b.StripBytes, b.StripBytesPerSource),
	}
}

// admit takes the in-flight (and long-poll) slots a forwarded request
// needs, or reports that none are free.
func (l *limits) admit(ex *exchange) bool {
	src := ex.rec.SrcIP
	if !l.flight.acquire(src, 1) {
		return false
	}
	ex.held.flight = true
	if ex.longPolls() {
		if !l.polls.acquire(src, 1) {
			ex.releaseHeld()
			return false
		}
		ex.held.poll = true
	}
	return true
}

// holdStrip takes n more bytes of the strip budget for ex.
func (l *limits) holdStrip(ex *exchange, n int64) bool {
	if !l.strip.acquire(ex.rec.SrcIP, n) {
		return false
	}
	ex.held.strip += n
	return true
}

// held is what an exchange took from the limits; releaseHeld gives it back.
type held struct {
	lim    *limits
	flight bool
	poll   bool
	strip  int64
}

func (ex *exchange) releaseHeld() {
	h := &ex.held
	if h.lim == nil {
		return
	}
	src := ex.rec.SrcIP
	if h.flight {
		h.lim.flight.release(src, 1)
		h.flight = false
	}
	if h.poll {
		h.lim.polls.release(src, 1)
		h.poll = false
	}
	h.lim.strip.release(src, h.strip)
	h.strip = 0
}
