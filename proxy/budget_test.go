package proxy

import (
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestBudgetForFitsTheCapsUnderTheMemoryBudget(t *testing.T) {
	for _, mem := range []int64{4 << 20, 20 << 20, 32 << 20, 256 << 20} {
		b, err := BudgetFor(mem)
		if err != nil {
			t.Fatal(err)
		}
		worst := int64(b.Conns)*connCost + int64(b.InFlight)*flightCost + b.StripBytes*stripCost
		if worst > mem {
			t.Errorf("%d MiB: the caps together allow %d bytes", mem>>20, worst)
		}
		if b.ConnsPerSource > b.Conns || b.InFlightPerSource > b.InFlight || b.LongPolls > b.InFlight ||
			b.LongPollsPerSource > b.LongPolls || b.StripBytesPerSource > b.StripBytes || b.StripBytesPerSource < min(maxStripBytes, b.StripBytes) {
			t.Errorf("%d MiB: shares out of order: %+v", mem>>20, b)
		}
		if b.ConnsPerSource*2 > b.Conns && mem >= 20<<20 {
			t.Errorf("%d MiB: one source may hold %d of %d connections", mem>>20, b.ConnsPerSource, b.Conns)
		}
	}
	if _, err := BudgetFor(1 << 20); err == nil {
		t.Error("a 1 MiB budget was accepted")
	}
}

// TestOnePodCannotFillTheRequestsInFlight: past its share a pod's request
// is refused at once with 503 and Retry-After, while another pod's is
// served.
func TestOnePodCannotFillTheRequestsInFlight(t *testing.T) {
	release := make(chan struct{})
	var started sync.WaitGroup
	h := newHarness(t, "aws", func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/hold") {
			started.Done()
			<-release
		}
		w.Write([]byte("ok"))
	}, func(c *Config) { c.Budget.InFlight, c.Budget.InFlightPerSource = 8, 3 })
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	var wg sync.WaitGroup
	started.Add(3)
	for range 3 {
		wg.Add(1)
		go func() { defer wg.Done(); h.do(accessorPod, "GET", "/latest/meta-data/hold", nil) }()
	}
	started.Wait()
	resp, _ := h.do(accessorPod, "GET", "/latest/meta-data/instance-id", nil)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("a fourth request of the same pod got %d (Retry-After %q), want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if resp, body := h.do(plainPod, "GET", "/latest/meta-data/instance-id", nil); resp.StatusCode != 200 || body != "ok" {
		t.Errorf("another pod got %d %q while the first held its share", resp.StatusCode, body)
	}
	close(release)
	wg.Wait()
	if v := testutil.ToFloat64(h.srv.m.denied.WithLabelValues("ep", "overloaded")); v != 1 {
		t.Errorf("denied_requests_total{reason=overloaded} = %v, want 1", v)
	}
}

// TestStripBuffersAreBudgetedPerSource: bodies held for stripping count
// against the pod's share; past it the pod gets 503, not the memory.
func TestStripBuffersAreBudgetedPerSource(t *testing.T) {
	big := strings.Repeat("entry-name-padding\n", 30000) // ~570 KiB
	h := newHarness(t, "aws", ok(big), func(c *Config) { c.Budget.StripBytes, c.Budget.StripBytesPerSource = 4<<20, 256<<10 })
	resp, _ := h.do(plainPod, "GET", "/latest/meta-data/", nil)
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("a strip body over the pod's share: status %d, want 503", resp.StatusCode)
	}
	if used, _ := h.srv.lim.strip.inUse(plainPod); used != 0 {
		t.Errorf("%d strip bytes still held after the request", used)
	}
}
