package proxy

import (
	"net/http"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// TestEvictionMakesRoomForANewSourceWhenSharesAreEqual: the total filled
// by sources holding equal shares must still admit a source not seen yet,
// by closing an idle connection of one of them (a flood from 8 pods of 32
// connections each once refused every other pod of the node); a source
// that already holds as many as the heaviest is refused, so equals never
// evict each other back and forth.
func TestEvictionMakesRoomForANewSourceWhenSharesAreEqual(t *testing.T) {
	src := func(i byte) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, 0, i}) }
	cases := []struct {
		name       string
		held       []int // connections held by sources 1, 2, ...; all idle
		total      int
		newcomer   byte
		admitted   bool
		evictsFrom []byte // any of these sources; none: nobody
	}{
		{name: "a new source at a total filled by two equal shares evicts", held: []int{4, 4}, total: 8, newcomer: 9, admitted: true, evictsFrom: []byte{1, 2}},
		{name: "a new source at a total filled by eight equal shares evicts", held: []int{4, 4, 4, 4, 4, 4, 4, 4}, total: 32, newcomer: 9, admitted: true, evictsFrom: []byte{1, 2, 3, 4, 5, 6, 7, 8}},
		{name: "a new source evicts from the heaviest", held: []int{2, 6}, total: 8, newcomer: 9, admitted: true, evictsFrom: []byte{2}},
		{name: "a source holding as many as the heaviest is refused", held: []int{4, 4}, total: 8, newcomer: 2, admitted: false},
		{name: "a source holding one less than the heaviest is refused", held: []int{5, 4}, total: 9, newcomer: 2, admitted: false},
		{name: "a source two below the heaviest evicts", held: []int{6, 4}, total: 10, newcomer: 2, admitted: true, evictsFrom: []byte{1}},
		{name: "a new source is refused when every source holds one", held: []int{1, 1, 1, 1, 1, 1, 1, 1}, total: 8, newcomer: 9, admitted: false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l := &limitListener{maxTotal: c.total, maxPerSrc: 100, bySrc: map[netip.Addr]map[*limitedConn]struct{}{}}
			for i, n := range c.held {
				for range n {
					lc := &limitedConn{l: l, src: src(byte(i + 1)), since: time.Now().Add(-time.Minute)}
					lc.state.Store(int32(http.StateIdle))
					if ok, victim, _ := l.acquire(lc); !ok || victim != nil {
						t.Fatalf("filling: admitted %v, victim %v", ok, victim)
					}
				}
			}
			ok, victim, reason := l.acquire(&limitedConn{l: l, src: src(c.newcomer), since: time.Now()})
			if ok != c.admitted {
				t.Fatalf("admitted = %v (%s), want %v", ok, reason, c.admitted)
			}
			switch {
			case len(c.evictsFrom) == 0 && victim != nil:
				t.Errorf("evicted a connection of %s, want none", victim.src)
			case len(c.evictsFrom) > 0 && victim == nil:
				t.Errorf("evicted nothing, want a connection of one of %v", c.evictsFrom)
			case len(c.evictsFrom) > 0 && !slices.Contains(c.evictsFrom, victim.src.As4()[3]):
				t.Errorf("evicted a connection of %s, want one of %v", victim.src, c.evictsFrom)
			}
		})
	}
}

// TestEvictionDoesNotSpareFreshConnections: a connection that has just
// been accepted and has not finished a request is evictable at once, or
// sources that keep reopening connections would keep every one of them
// too fresh to evict; one serving a request never is.
func TestEvictionDoesNotSpareFreshConnections(t *testing.T) {
	a, b, newcomer := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.9")
	for _, c := range []struct {
		name    string
		state   http.ConnState
		evicted bool
	}{
		{"a connection accepted a moment ago is evicted", http.StateNew, true},
		{"an idle connection is evicted", http.StateIdle, true},
		{"a connection serving a request is not", http.StateActive, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			l := &limitListener{maxTotal: 8, maxPerSrc: 100, bySrc: map[netip.Addr]map[*limitedConn]struct{}{}}
			for i := range 8 {
				src := a
				if i%2 == 1 {
					src = b
				}
				lc := &limitedConn{l: l, src: src, since: time.Now()}
				lc.state.Store(int32(c.state))
				l.acquire(lc)
			}
			ok, victim, _ := l.acquire(&limitedConn{l: l, src: newcomer, since: time.Now()})
			if ok != c.evicted || (victim != nil) != c.evicted {
				t.Fatalf("admitted %v, victim %v; want both %v", ok, victim != nil, c.evicted)
			}
		})
	}
}

// TestEvictionTakesAnIdleConnectionBeforeANewOne: a new connection may
// hold a whole first request not yet read; an idle one's client retries
// on a fresh connection. The idle one goes first, even when the new one is
// older.
func TestEvictionTakesAnIdleConnectionBeforeANewOne(t *testing.T) {
	heavy, newcomer := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.9")
	l := &limitListener{maxTotal: 4, maxPerSrc: 100, bySrc: map[netip.Addr]map[*limitedConn]struct{}{}}
	t0 := time.Now()
	var idle *limitedConn
	for i, st := range []http.ConnState{http.StateNew, http.StateNew, http.StateIdle, http.StateActive} {
		lc := &limitedConn{l: l, src: heavy, since: t0.Add(time.Duration(i) * time.Second)}
		lc.state.Store(int32(st))
		l.acquire(lc)
		if st == http.StateIdle {
			idle = lc
		}
	}
	ok, victim, _ := l.acquire(&limitedConn{l: l, src: newcomer, since: t0.Add(time.Minute)})
	if !ok || victim != idle {
		t.Fatalf("admitted %v, evicted %p; want the idle connection %p", ok, victim, idle)
	}
}
