package main

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/exp/trace"
)

// A request's time on metaguard's side, from the moment the poller makes
// its connection's goroutine runnable to that goroutine's next wait for a
// request, split by what the goroutine was doing.
const (
	catRunning  = iota // on a CPU (as Go sees it: the kernel may have preempted the thread)
	catRunnable        // runnable, waiting for one of GOMAXPROCS Ps
	catSyscall         // in a system call
	catUpstream        // blocked until the upstream's answer reached the Transport's read loop
	catChannel         // blocked on a channel after that: the read loop handing the answer over
	catLock            // blocked on a mutex or condition variable
	catOther           // any other wait
	nCats
)

var catNames = [nCats]string{"running", "runnable, waiting for a P", "in system calls",
	"waiting for the upstream: the request's write, the upstream's work, the answer's arrival",
	"waiting for the Transport's read loop to hand the arrived answer over", "blocked on locks", "other waits"}

// request is one request's time on metaguard's side.
type request struct {
	start, end  trace.Time
	by          [nCats]time.Duration
	assist      time.Duration // in GC mark assists
	stwOverlap  time.Duration // while the world was stopped
	markOverlap time.Duration
	lockedAt    map[string]time.Duration
}

func (r *request) total() time.Duration { return r.end.Sub(r.start) }

// tailResult is what the trace says about the slowest 1% of requests
// against all of them.
type tailResult struct {
	label                     string // the Go runtime settings traced
	span                      time.Duration
	requests                  int
	clientRPS, clientP99      float64 // wrk's, over the whole traced run
	p50, p99, p999            time.Duration
	all, slow                 [nCats]time.Duration // mean per request
	assistAll, assistSlow     time.Duration
	stwAll, stwSlow           time.Duration // mean time per request inside a stop-the-world
	gcShareAll, gcShareSlow   float64       // requests that overlapped a GC mark phase
	stwShareAll, stwShareSlow float64
	gcCycles                  int
	gcMarkShare               float64 // of the span, a mark phase ran
	stwTotal, stwMax          time.Duration
	slowLocks                 []perfLine // where the slowest requests waited on locks, % of their lock wait
}

// traceAllowed runs the traced build as in the allowed row and traces it
// for the middle of one wrk run.
func (b *runner) traceAllowed(ctx context.Context, sess session) (*tailResult, error) {
	logf("tracing metaguard (%s) with runtime/trace", sess)
	path := filepath.Join(b.dir, string(sess)+".trace")
	os.Setenv("METAGUARD_BENCH_TRACE", path)
	mg, stop, err := b.startMetaguard(ctx, sess, "audit-"+string(sess)+".jsonl")
	os.Unsetenv("METAGUARD_BENCH_TRACE")
	if err != nil {
		return nil, err
	}
	defer stop()
	t := b.res.tables[0]
	if _, err := b.wrk(ctx, t, pathAllowed, b.o.warmup); err != nil {
		return nil, err
	}
	span := max(b.o.duration-2*time.Second, time.Second)
	signals := make(chan error, 1)
	go func() {
		time.Sleep(time.Second)
		err := syscall.Kill(mg.Pid(), syscall.SIGUSR1)
		time.Sleep(span)
		signals <- errors.Join(err, syscall.Kill(mg.Pid(), syscall.SIGUSR2))
	}()
	w, err := b.wrk(ctx, t, pathAllowed, b.o.duration)
	if err = errors.Join(err, <-signals); err != nil {
		return nil, err
	}
	var f *os.File
	for i := 0; i < 100 && f == nil; i++ {
		if f, err = os.Open(path); err != nil {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if f == nil {
		return nil, fmt.Errorf("the traced build wrote no trace: %w", err)
	}
	defer f.Close()
	res, err := analyseTrace(bufio.NewReaderSize(f, 1<<20))
	if err != nil {
		return nil, err
	}
	res.label, res.clientRPS, res.clientP99 = "the DaemonSet's settings", w.RPS(), w.Pct(99)
	if sess == sessTracedVariant {
		res.label = "`" + b.o.variant + "`"
	}
	return res, nil
}

// goroutine is the analysis's state of one goroutine.
type goroutine struct {
	cat        int
	since      trace.Time
	lock       string   // where it blocked, when cat is catLock
	idle       bool     // waiting for the next request on its connection
	req        *request // the request it serves, if any
	assistFrom trace.Time
	// netWait: its wait is on a socket; netReady: when the poller last
	// woke it from one (for a read loop: when an upstream answer arrived).
	netWait  bool
	netReady trace.Time
}

// analyseTrace splits every client connection's goroutine into requests
// and sums what each spent where; GC and stop-the-world ranges are kept to
// see which requests they overlapped.
func analyseTrace(r io.Reader) (*tailResult, error) {
	tr, err := trace.NewReader(r)
	if err != nil {
		return nil, err
	}
	gs := map[trace.GoID]*goroutine{}
	var reqs []*request
	type interval struct{ from, to trace.Time }
	var marks, stws []interval
	var markFrom, stwFrom, first, last trace.Time
	res := &tailResult{}
	for {
		ev, err := tr.ReadEvent()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("reading the trace: %w", err)
		}
		now := ev.Time()
		if first == 0 {
			first = now
		}
		last = now
		switch ev.Kind() {
		case trace.EventRangeBegin, trace.EventRangeActive, trace.EventRangeEnd:
			rg := ev.Range()
			begin := ev.Kind() != trace.EventRangeEnd
			switch {
			case rg.Name == "GC concurrent mark phase" && begin:
				markFrom = now
			case rg.Name == "GC concurrent mark phase" && markFrom != 0:
				marks, markFrom = append(marks, interval{markFrom, now}), 0
				res.gcCycles++
			case strings.HasPrefix(rg.Name, "stop-the-world") && begin:
				stwFrom = now
			case strings.HasPrefix(rg.Name, "stop-the-world") && stwFrom != 0:
				stws, stwFrom = append(stws, interval{stwFrom, now}), 0
			case rg.Name == "GC mark assist" && rg.Scope.Kind == trace.ResourceGoroutine:
				if g := gs[rg.Scope.Goroutine()]; g != nil && begin {
					g.assistFrom = now
				} else if g != nil && g.assistFrom != 0 {
					if g.req != nil {
						g.req.assist += now.Sub(g.assistFrom)
					}
					g.assistFrom = 0
				}
			}
		case trace.EventStateTransition:
			st := ev.StateTransition()
			if st.Resource.Kind != trace.ResourceGoroutine {
				continue
			}
			id := st.Resource.Goroutine()
			g := gs[id]
			if g == nil {
				g = &goroutine{since: now}
				gs[id] = g
			}
			from, to := st.Goroutine()
			if g.req != nil {
				g.req.by[g.cat] += now.Sub(g.since)
				if g.cat == catLock {
					g.req.lockedAt[g.lock] += now.Sub(g.since)
				}
				// Woken from a channel by a goroutine the poller had woken
				// from a socket since: until then the wait was the upstream.
				if actor := gs[ev.Goroutine()]; g.cat == catChannel && to == trace.GoRunnable && actor != nil && actor.netReady > g.since {
					d := actor.netReady.Sub(g.since)
					g.req.by[catChannel] -= d
					g.req.by[catUpstream] += d
				}
			}
			if g.netWait && to == trace.GoRunnable {
				g.netReady = now
			}
			g.since, g.cat, g.netWait = now, catOther, false
			switch to {
			case trace.GoRunning:
				g.cat = catRunning
			case trace.GoRunnable:
				g.cat = catRunnable
				if from == trace.GoWaiting && g.idle {
					// The poller found the next request on the connection.
					g.idle, g.req = false, &request{start: now, lockedAt: map[string]time.Duration{}}
				}
			case trace.GoSyscall:
				g.cat = catSyscall
			case trace.GoWaiting:
				frames := stackFuncs(st.Stack)
				inHandler := slices.ContainsFunc(frames, func(f string) bool { return strings.HasSuffix(f, ".ServeHTTP") })
				g.netWait = st.Reason == "network"
				switch reason := st.Reason; {
				case reason == "network" && !inHandler && slices.Contains(frames, "net/http.(*conn).serve"):
					if g.req != nil {
						g.req.end = now
						reqs = append(reqs, g.req)
					}
					g.idle, g.req = true, nil
				case strings.Contains(reason, "chan") || strings.Contains(reason, "select"):
					g.cat = catChannel
				case strings.Contains(reason, "sync"):
					g.cat, g.lock = catLock, lockSite(frames)
				}
			case trace.GoNotExist:
				delete(gs, id)
			}
		}
	}
	if len(reqs) < 100 {
		return nil, fmt.Errorf("the trace holds %d requests; too few to say anything about a tail", len(reqs))
	}
	overlap := func(r *request, ivs []interval) time.Duration {
		var d time.Duration
		for _, iv := range ivs {
			if iv.from < r.end && iv.to > r.start {
				d += min(iv.to, r.end).Sub(max(iv.from, r.start))
			}
		}
		return d
	}
	for _, r := range reqs {
		r.markOverlap, r.stwOverlap = overlap(r, marks), overlap(r, stws)
	}
	slices.SortFunc(reqs, func(a, b *request) int { return cmp.Compare(a.total(), b.total()) })
	at := func(p float64) time.Duration { return reqs[min(int(p*float64(len(reqs))), len(reqs)-1)].total() }
	res.span, res.requests = last.Sub(first), len(reqs)
	res.p50, res.p99, res.p999 = at(0.5), at(0.99), at(0.999)
	slow := reqs[int(0.99*float64(len(reqs))):]
	res.all, res.assistAll, res.stwAll, res.gcShareAll, res.stwShareAll = summarise(reqs)
	res.slow, res.assistSlow, res.stwSlow, res.gcShareSlow, res.stwShareSlow = summarise(slow)
	for _, iv := range marks {
		res.gcMarkShare += float64(iv.to.Sub(iv.from)) / float64(res.span)
	}
	for _, iv := range stws {
		d := iv.to.Sub(iv.from)
		res.stwTotal, res.stwMax = res.stwTotal+d, max(res.stwMax, d)
	}
	locks := map[string]time.Duration{}
	var lockTotal time.Duration
	for _, r := range slow {
		for site, d := range r.lockedAt {
			locks[site] += d
			lockTotal += d
		}
	}
	for site, d := range locks {
		res.slowLocks = append(res.slowLocks, perfLine{name: site, pct: 100 * float64(d) / float64(lockTotal)})
	}
	res.slowLocks = top(res.slowLocks, 5)
	return res, nil
}

// summarise is the mean time per request in each category, in assists and
// inside stops of the world, and the share of requests that overlapped a GC mark phase and a
// stop-the-world.
func summarise(reqs []*request) (by [nCats]time.Duration, assist, stwTime time.Duration, gc, stw float64) {
	n := time.Duration(len(reqs))
	for _, r := range reqs {
		for c := range by {
			by[c] += r.by[c] / n
		}
		assist, stwTime = assist+r.assist/n, stwTime+r.stwOverlap/n
		if r.markOverlap > 0 {
			gc++
		}
		if r.stwOverlap > 0 {
			stw++
		}
	}
	return by, assist, stwTime, gc / float64(len(reqs)), stw / float64(len(reqs))
}

func stackFuncs(s trace.Stack) []string {
	var out []string
	for f := range s.Frames() {
		out = append(out, f.Func)
	}
	return out
}

// lockSite names where a goroutine blocked on a lock: the first frame
// outside sync and the runtime.
func lockSite(frames []string) string {
	for _, f := range frames {
		if !strings.HasPrefix(f, "sync.") && !strings.HasPrefix(f, "internal/sync.") && !strings.HasPrefix(f, "runtime.") {
			return f
		}
	}
	return "unknown"
}
