//go:build !race

package proxy

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// What one unit of each resource the budget caps really costs in Go
// runtime memory: the live heap and the goroutine stacks it adds to the
// proxy (what GOMEMLIMIT counts, garbage aside), measured on the proxy
// serving real TCP connections with every other cap out of the way.
// connCost and flightCost must cover them. (The race detector multiplies
// memory, hence the build tag.)
//
// The clients and upstreams are in this process too, but hold only their
// net.Conn (about half a KiB each, inside the margin) and no goroutine.

const costUnits = 200

// A body to strip is charged twice (stripresp.go): for its buffer and
// for its stripped copy. stripHeldCost bounds what the buffer costs per
// byte of the body, of the 2 x stripCost the body is charged.
const (
	stripCharges  = 2
	stripHeldCost = 2
)

// liveBytes is the live heap plus the stacks in use, after a collection.
func liveBytes() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc) + int64(m.StackInuse)
}

// costHarness is a proxy whose caps never bind.
func costHarness(t *testing.T, flavor, upstream string) *harness {
	return newHarnessAt(t, flavor, "", upstream, func(c *Config) {
		c.Budget = Budget{Conns: 1 << 20, ConnsPerSource: 1 << 20, InFlight: 1 << 20, InFlightPerSource: 1 << 20,
			LongPolls: 1 << 20, LongPollsPerSource: 1 << 20, StripBytes: 1 << 40, StripBytesPerSource: 1 << 40}
		c.UpstreamTimeout = time.Minute
	})
}

// openClients opens n connections from plainPod and writes greeting on
// each; it never reads, so responses wait in the kernel.
func openClients(t *testing.T, h *harness, n int, greeting string) []net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: plainPod.AsSlice()}}
	conns := make([]net.Conn, 0, n)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for range n {
		c, err := d.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		if greeting != "" {
			if _, err := io.WriteString(c, greeting); err != nil {
				t.Fatal(err)
			}
		}
	}
	return conns
}

// silentUpstream accepts connections in the kernel's backlog and never
// answers: every request forwarded to it stays in flight.
func silentUpstream(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String()
}

func requests(h *harness) float64 {
	fams, _ := h.reg.Gather()
	for _, f := range fams {
		if f.GetName() == "metaguard_request_duration_seconds" {
			n := 0.0
			for _, m := range f.Metric {
				n += float64(m.GetHistogram().GetSampleCount())
			}
			return n
		}
	}
	return 0
}

// unitCost is the live bytes added per unit once n units are held.
func unitCost(t *testing.T, what string, hold func(n int), held func() bool) int64 {
	t.Helper()
	before := liveBytes()
	hold(costUnits)
	deadline := time.Now().Add(20 * time.Second)
	for !held() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: the units were not all held within 20s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
	per := (liveBytes() - before) / costUnits
	t.Logf("%s: %d B (%.1f KiB) of live heap and stack each", what, per, float64(per)/1024)
	return per
}

func TestMeasuredCostsAreWithinTheBudgetConstants(t *testing.T) {
	if testing.Short() {
		t.Skip("measures memory; not in -short")
	}
	const awsGet = "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n"
	t.Run("an idle kept-alive connection", func(t *testing.T) {
		// After a denied request: a forwarded one would leave upstream
		// connections in the pool too, which flightCost accounts for.
		const denied = "GET /latest/meta-data/iam/info HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n"
		h := costHarness(t, "aws", newUpstream(t, ok("i-1")).addr())
		c := unitCost(t, "idle connection after one request", func(n int) { openClients(t, h, n, denied) },
			func() bool { return requests(h) >= costUnits })
		checkCost(t, c, connCost, "connCost")
	})
	t.Run("a silent connection", func(t *testing.T) {
		h := costHarness(t, "aws", newUpstream(t, ok("i-1")).addr())
		c := unitCost(t, "connection that sent nothing", func(n int) { openClients(t, h, n, "") },
			func() bool { return gaugeValue(h, "metaguard_connections_open") >= costUnits })
		checkCost(t, c, connCost, "connCost")
	})
	t.Run("a connection sending a header block as large as allowed", func(t *testing.T) {
		h := costHarness(t, "aws", newUpstream(t, ok("i-1")).addr())
		partial := "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\n" +
			strings.Repeat("X-Slow: "+strings.Repeat("s", 90)+"\r\n", (maxHeaderBytes-1024)/100)
		c := unitCost(t, fmt.Sprintf("connection holding %d header bytes", len(partial)), func(n int) { openClients(t, h, n, partial) },
			func() bool { return gaugeValue(h, "metaguard_connections_open") >= costUnits })
		checkCost(t, c, connCost, "connCost")
	})
	t.Run("a request in flight", func(t *testing.T) {
		h := costHarness(t, "aws", silentUpstream(t))
		c := unitCost(t, "request waiting on the upstream, with its connection", func(n int) { openClients(t, h, n, awsGet) },
			func() bool { total, _ := h.srv.lim.flight.inUse(plainPod); return total >= costUnits })
		checkCost(t, c, connCost+flightCost, "connCost+flightCost")
	})
	t.Run("a long poll", func(t *testing.T) {
		h := costHarness(t, "gcp", silentUpstream(t))
		poll := "GET /computeMetadata/v1/instance/zone?wait_for_change=true&timeout_sec=300 HTTP/1.1\r\nHost: metadata.google.internal\r\nMetadata-Flavor: Google\r\n\r\n"
		c := unitCost(t, "GCP wait_for_change waiting on the upstream, with its connection", func(n int) { openClients(t, h, n, poll) },
			func() bool { total, _ := h.srv.lim.polls.inUse(plainPod); return total >= costUnits })
		checkCost(t, c, connCost+flightCost, "connCost+flightCost")
	})
	t.Run("a response being relayed", func(t *testing.T) {
		// Response headers as large as the upstream may send and a body
		// that stalls: the exchange holds its upstream connection, the
		// headers and the relay's copy buffer.
		head := "HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n" + strings.Repeat("X-Pad: "+strings.Repeat("p", 90)+"\r\n", (maxResponseHeaderBytes-1024)/100) + "\r\n"
		addr, held := holdingUpstream(t, []byte(head), bytes.Repeat([]byte("b"), 1000))
		h := costHarness(t, "aws", addr)
		c := unitCost(t, "request relaying a stalled response with large headers, with its connection", func(n int) { openClients(t, h, n, awsGet) },
			func() bool { return held() >= costUnits })
		checkCost(t, c, connCost+flightCost, "connCost+flightCost")
	})
	for _, size := range []int{maxStripBytes - 1024, maxStripBytes/2 + 16<<10} {
		t.Run(fmt.Sprintf("a body of %d bytes held to be stripped", size), func(t *testing.T) {
			testStripHeld(t, size)
		})
	}
}

// testStripHeld measures what a body held to be stripped costs beyond the
// bytes the strip budget charges for it: a body just over a power of two
// is the worst for the buffer's growth.
func testStripHeld(t *testing.T, size int) {
	{
		body := bytes.Repeat([]byte("entry\n"), size/6)
		head := "HTTP/1.1 200 OK\r\nContent-Type: application/text\r\nMetadata-Flavor: Google\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n"
		addr, held := holdingUpstream(t, []byte(head), body)
		h := costHarness(t, "gcp", addr)
		list := "GET /computeMetadata/v1/instance/ HTTP/1.1\r\nHost: metadata.google.internal\r\nMetadata-Flavor: Google\r\n\r\n"
		before := liveBytes()
		const n = 20
		openClients(t, h, n, list)
		// Every body held, less its last byte, and no more arriving (a
		// loaded machine can leave one request behind: it is left out of
		// the count, its connection's cost is counted anyway).
		deadline := time.Now().Add(20 * time.Second)
		var total, last int64
		for stable := 0; stable < 20; time.Sleep(10 * time.Millisecond) {
			if total, _ = h.srv.lim.strip.inUse(plainPod); total != last || total < int64((n-2)*(len(body)-1)) {
				stable, last = 0, total
			} else {
				stable++
			}
			if time.Now().After(deadline) {
				t.Fatalf("bodies not held within 20s: %d bytes, %d held upstream, want %d", total, held(), n*(len(body)-1))
			}
		}
		bodies := total / int64(len(body)-1)
		per := (liveBytes() - before) / bodies
		t.Logf("a %d-byte body held to be stripped: %d B live each, %.2fx the bytes it is charged", len(body), per, float64(per)/float64(len(body)))
		checkCost(t, per, connCost+flightCost+stripHeldCost*int64(len(body)), "connCost+flightCost+stripHeldCost × the body")
	}
}

func checkCost(t *testing.T, measured, constant int64, name string) {
	t.Helper()
	if measured > constant {
		t.Errorf("measured %d B per unit, over %s = %d B: the caps derived from it do not fit the budget", measured, name, constant)
	}
}

func gaugeValue(h *harness, name string) float64 {
	fams, _ := h.reg.Gather()
	for _, f := range fams {
		if f.GetName() == name && len(f.Metric) > 0 {
			return f.Metric[0].GetGauge().GetValue()
		}
	}
	return 0
}

// holdingUpstream answers every request with head and body, less its
// last byte, and then holds the connection until the test ends; held
// says how many it holds.
func holdingUpstream(t *testing.T, head, body []byte) (string, func() int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			// The Transport may dial a spare connection that carries no
			// request; an answer on it would be unsolicited.
			c.SetReadDeadline(time.Now().Add(time.Second))
			if _, err := c.Read(make([]byte, 1)); err != nil {
				c.Close()
				continue
			}
			c.Write(head)
			c.Write(body[:len(body)-1])
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String(), func() int { mu.Lock(); defer mu.Unlock(); return len(conns) }
}

// peakDuring runs f with the collector running all the time (GOGC=1), so
// that the heap in use is close to what is live, and samples it; it
// returns the most f added.
func peakDuring(f func()) int64 {
	old := debug.SetGCPercent(1)
	defer debug.SetGCPercent(old)
	base := liveBytes()
	var peak atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		var m runtime.MemStats
		for {
			select {
			case <-stop:
				return
			default:
			}
			runtime.ReadMemStats(&m)
			peak.Store(max(peak.Load(), int64(m.HeapAlloc)+int64(m.StackInuse)))
			time.Sleep(50 * time.Microsecond)
		}
	}()
	f()
	close(stop)
	<-done
	return peak.Load() - base
}

// TestStrippingIsWithinStripCost: what stripping costs beyond the body,
// for the shapes metadata services answer (a GCP recursive dump whose
// large values are kube-env and SSH keys, a listing) and for the worst an
// upstream could make (a dump or listing of a hundred thousand tiny
// entries), fits in a body's strip charges with the body held.
func TestStrippingIsWithinStripCost(t *testing.T) {
	const size = maxStripBytes - 1024
	keep := func(p string) bool { return !strings.HasSuffix(p, "/token") && !strings.HasSuffix(p, "/kube-env") }
	var dump bytes.Buffer
	dump.WriteString(`{"attributes":{"cluster-name":"e2e","ssh-keys":"`)
	for dump.Len() < size-64 {
		dump.WriteString(`alice:ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeFakeFakeFakeFakeFake alice\n`)
	}
	dump.WriteString(`"},"name":"node-a"}`)
	var listing bytes.Buffer
	for i := 0; listing.Len() < size-64; i++ {
		fmt.Fprintf(&listing, "attribute-with-a-long-name-%d\n", i)
	}
	var keys bytes.Buffer
	keys.WriteString("{")
	for i := 0; keys.Len() < size-32; i++ {
		fmt.Fprintf(&keys, `"k%d":1,`, i)
	}
	keys.WriteString(`"z":1}`)
	var tiny bytes.Buffer
	for i := 0; tiny.Len() < size-8; i++ {
		fmt.Fprintf(&tiny, "%x\n", i%16)
	}
	for _, c := range []struct {
		name string
		body []byte
		run  func([]byte)
	}{
		{"a recursive JSON dump of long values", dump.Bytes(), func(b []byte) { StripJSON(b, "/computeMetadata/v1/instance/", keep) }},
		{"a listing of 30-byte entries", listing.Bytes(), func(b []byte) { StripListing(b, "/computeMetadata/v1/instance/attributes/", keep) }},
		{"a JSON dump of tiny entries", keys.Bytes(), func(b []byte) { StripJSON(b, "/computeMetadata/v1/instance/", keep) }},
		{"a listing of one-letter entries", tiny.Bytes(), func(b []byte) { StripListing(b, "/computeMetadata/v1/instance/", keep) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.run(c.body) // warm up caches the first call fills
			// The median of five: a collection that lags behind on a
			// loaded machine leaves garbage in one sample, not in most.
			var runs []int64
			for range 5 {
				runs = append(runs, peakDuring(func() { c.run(c.body) }))
			}
			slices.Sort(runs)
			median, worst := runs[len(runs)/2], runs[len(runs)-1]
			t.Logf("stripping %d bytes adds %.2fx the body (median of 5; at most %.2fx)", len(c.body), float64(median)/float64(len(c.body)), float64(worst)/float64(len(c.body)))
			if allowed := stripCharges*stripCost - stripHeldCost; median > int64(allowed)*int64(len(c.body)) {
				t.Errorf("stripping adds %.2fx the body, over the %dx its strip charges leave beside the body held", float64(median)/float64(len(c.body)), allowed)
			}
		})
	}
}
