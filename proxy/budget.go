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
// memory (heap and stacks: what GOMEMLIMIT counts). Measured on the real
// binary (RELIABILITY.md, the flood tests); rounded up.
const (
	// connCost is one client connection waiting for or between requests:
	// its serving goroutine's stack, net/http's 4 KiB read and write
	// buffers, the connection and TLS-free net.Conn state, and up to the
	// header limit while headers arrive.
	connCost = 32 << 10
	// flightCost is a request being forwarded, beyond its connection: the
	// handler's grown stack, the upstream connection's read and write
	// loops and their buffers, the response headers up to
	// maxResponseHeaderBytes and the 32 KiB copy buffer.
	flightCost = 96 << 10
)

// BudgetFor divides a memory budget for the request path between the
// resources: 40% for client connections, 30% for requests in flight, 30%
// for strip buffers. One source may take an eighth of the connections and
// of the requests in flight, a quarter of the strip bytes (but at least one
// maximal body), and four long polls, so that a flooding pod leaves the
// rest to the others. Long polls together may hold at most a quarter of
// the requests in flight.
func BudgetFor(requestPathBytes int64) (Budget, error) {
	if requestPathBytes < 4<<20 {
		return Budget{}, fmt.Errorf("a memory budget of %d bytes for the request path is below the 4 MiB the proxy needs", requestPathBytes)
	}
	b := Budget{
		Conns:      int(requestPathBytes * 4 / 10 / connCost),
		InFlight:   int(requestPathBytes * 3 / 10 / flightCost),
		StripBytes: requestPathBytes * 3 / 10,
	}
	b.ConnsPerSource = max(b.Conns/8, 4)
	b.InFlightPerSource = max(b.InFlight/8, 2)
	b.LongPolls = max(b.InFlight/4, 1)
	b.LongPollsPerSource = min(4, b.LongPolls)
	b.StripBytesPerSource = min(max(b.StripBytes/4, maxStripBytes), b.StripBytes)
	return b, nil
}

// DefaultRequestPathBytes is the request path's share of a Go memory limit:
// half, leaving the other half for the informers' cache, the policy, the
// runtime's own overhead and the garbage collector's headroom.
func DefaultRequestPathBytes(memLimit int64) int64 { return memLimit / 2 }
