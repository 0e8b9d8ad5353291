package proxy

import "fmt"

// Budget bounds everything the request path can make the proxy hold at
// once: client connections, requests in flight upstream (GCP long polls
// among them) and upstream bodies held to be stripped, each in total and
// per source address. BudgetFor derives all of them from one memory
// budget, so that the worst case they allow together fits under the Go
// runtime's memory limit with the margin the rest of the process needs.
// Work past a cap is refused at once (a closed connection, or 503 with
// Retry-After), never queued.
type Budget struct {
	Conns, ConnsPerSource           int
	InFlight, InFlightPerSource     int
	LongPolls, LongPollsPerSource   int
	StripBytes, StripBytesPerSource int64
}

// What one unit of each resource costs at most, in bytes of Go runtime
// memory (live heap and goroutine stacks: what GOMEMLIMIT counts, garbage
// aside). Measured on the proxy serving real connections
// (TestMeasuredCostsAreWithinTheBudgetConstants and
// TestStrippingIsWithinStripCost, which fail if a change
// makes a unit cost more) and on the real binary under floods
// (RELIABILITY.md); rounded up.
const (
	// connCost is one client connection waiting for or between requests:
	// 12.5-14 KiB silent, 19.3 KiB idle after a request (its serving
	// goroutine's stack has grown to 16 KiB), 28-30.5 KiB while a header
	// block as large as allowed (12 KiB) is arriving.
	connCost = 36 << 10
	// flightCost is a request being forwarded, beyond its connection:
	// 30 KiB waiting on the upstream (a GCP long poll alike: the upstream
	// connection's two goroutines and buffers, the request's context and
	// timer), 90 KiB relaying a response whose headers are as large as
	// allowed (16 KiB) through the 32 KiB copy buffer (106-111 KiB with
	// the connection).
	flightCost = 96 << 10
	// stripCost is the Go memory one byte charged to the strip budget
	// may cost. A body is charged twice, for its buffer and for its
	// stripped copy (the copy is never larger). The buffer costs 1.04-1.09x
	// the body (sized from Content-Length), and stripping adds 6-7x the
	// body for a JSON dump of long values such as kube-env or SSH keys
	// (the decoded value, the decoder's copy, the output), 3-5x for a
	// listing, 4-5x for a dump or listing of a hundred thousand tiny
	// entries: 8x the body, 4x each charged byte, rounded up for margin.
	stripCost = 5
)

// BudgetFor divides a memory budget for the request path between the
// resources: 35% for client connections, 25% for requests in flight, 40%
// for strip buffers (charged stripCost per byte). One source may take an
// eighth of the connections and of the requests in flight (at least 4),
// a quarter of the strip charges (but at least what one maximal body is
// charged, if the budget holds it), and four long polls, so that a
// flooding pod leaves
// the rest to the others. Long polls together may hold at most a quarter
// of the requests in flight.
//
// With GOMEMLIMIT=32MiB the request path gets 16 MiB: 159 connections (19
// per source), 42 requests in flight (5 per source), 10 long polls (4 per
// source), 1.28 MiB of strip charges (so no body over 0.64 MiB can be
// stripped). At the measured worst costs they hold together 159 x 30.5
// KiB + 42 x 90 KiB + 0.64 MiB x 8 = 4.7 + 3.7 + 5.1 = 13.5 MiB; with the
// rest of the process (about 6 MiB live: informer caches, policy,
// runtime) under 20 MiB live, which leaves the garbage collector 12 MiB
// of headroom under the limit. (GOMEMLIMIT=40MiB gives 199 connections,
// 53 in flight, 1.6 MiB of strip charges; but with the binary's own
// mapped pages that limit leaves the container no margin: RELIABILITY.md.)
func BudgetFor(requestPathBytes int64) (Budget, error) {
	if requestPathBytes < 4<<20 {
		return Budget{}, fmt.Errorf("a memory budget of %d bytes for the request path is below the 4 MiB the proxy needs", requestPathBytes)
	}
	b := Budget{
		Conns:      int(requestPathBytes * 35 / 100 / connCost),
		InFlight:   int(requestPathBytes * 25 / 100 / flightCost),
		StripBytes: requestPathBytes * 40 / 100 / stripCost,
	}
	b.ConnsPerSource = max(b.Conns/8, 4)
	b.InFlightPerSource = min(max(b.InFlight/8, 4), b.InFlight)
	b.LongPolls = max(b.InFlight/4, 1)
	b.LongPollsPerSource = min(4, b.LongPolls)
	// A body is charged for its buffer (one byte more than the body, to
	// tell one over the bound) and for its stripped copy.
	b.StripBytesPerSource = min(max(b.StripBytes/4, 2*maxStripBytes+1), b.StripBytes)
	return b, nil
}

// DefaultRequestPathBytes is the request path's share of a Go memory limit:
// half, leaving the other half for the informers' cache, the policy, the
// runtime's own overhead and the garbage collector's headroom.
func DefaultRequestPathBytes(memLimit int64) int64 { return memLimit / 2 }
