//go:build e2e

package e2e

import (
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"metaguard.dev/metaguard/e2e/sandbox"
	"metaguard.dev/metaguard/proxy/audit"
)

// victimLoad sends GETs from a pod the policy allows until stop closes,
// and reports their statuses and latencies.
func victimLoad(n *node, pod *sandbox.Pod, url string, every time.Duration, stop <-chan struct{}) <-chan victimResult {
	out := make(chan victimResult, 1)
	go func() {
		var res victimResult
		res.statuses = map[int]int{}
		for {
			select {
			case <-stop:
				out <- res
				return
			default:
			}
			ctx, cancel := context.WithTimeout(n.ctx, 10*time.Second)
			r, took, err := podGet(ctx, n.s, pod, url, nil)
			cancel()
			if err != nil {
				res.errors++
			} else {
				res.statuses[r.status]++
			}
			res.latencies = append(res.latencies, took)
			time.Sleep(every)
		}
	}()
	return out
}

type victimResult struct {
	statuses  map[int]int
	errors    int
	latencies []time.Duration
}

func (v victimResult) ok() bool {
	return v.errors == 0 && len(v.statuses) == 1 && v.statuses[200] > 0
}

// TestSlowlorisCannotStarveOtherPods: one pod opens 1,000 connections that
// send half a request and never finish it. Past its per-source share of
// connections (derived from the memory budget) they are closed at accept,
// the rest are closed by the 5 s ReadHeaderTimeout, and another pod's
// requests keep succeeding quickly the whole time. Idle kept-alive
// connections count against the same limit.
func TestSlowlorisCannotStarveOtherPods(t *testing.T) {
	n := startNode(t, relPolicy)
	attacker := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "attacker", Labels: map[string]string{"app": "batch"}})
	victim := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "victim", Labels: map[string]string{"app": "web"}})
	dial := sandbox.NetnsDialer(attacker.Netns)
	rejected0 := metric(n.metrics(), "metaguard_connections_rejected_total", map[string]string{"limit": "per_source"})
	perSource := n.budget().ConnsPerSource

	t.Run("1,000 half-sent requests are bounded and time out", func(t *testing.T) {
		const slow = 1000
		stop := make(chan struct{})
		victimDone := victimLoad(n, victim, instanceID, 20*time.Millisecond, stop)
		type closed struct {
			after time.Duration // from the connection's dial to its close by metaguard
		}
		var wg sync.WaitGroup
		closes := make(chan closed, slow)
		dialErrs := 0
		begin := time.Now()
		for range slow {
			ctx, cancel := context.WithTimeout(n.ctx, 3*time.Second)
			c, err := dial(ctx, "tcp", "169.254.169.254:80")
			cancel()
			if err != nil {
				dialErrs++
				continue
			}
			t.Cleanup(func() { c.Close() })
			dialed := time.Now()
			_, _ = io.WriteString(c, "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\nX-Slow: ")
			wg.Add(1)
			go func() {
				defer wg.Done()
				_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
				_, err := c.Read(make([]byte, 512))
				if isTimeout(err) {
					return // never closed: counted below
				}
				closes <- closed{time.Since(dialed)}
			}()
		}
		opened := time.Since(begin)
		wg.Wait()
		close(stop)
		v := <-victimDone
		close(closes)
		var atAccept, byTimeout, early int
		var firstTimeout, lastTimeout time.Duration
		for c := range closes {
			switch {
			case c.after < time.Second:
				atAccept++
			case c.after >= 4500*time.Millisecond && c.after < 8*time.Second:
				byTimeout++
				if firstTimeout == 0 || c.after < firstTimeout {
					firstTimeout = c.after
				}
				lastTimeout = max(lastTimeout, c.after)
			default:
				early++
			}
		}
		neverClosed := slow - dialErrs - atAccept - byTimeout - early
		rejected := metric(n.metrics(), "metaguard_connections_rejected_total", map[string]string{"limit": "per_source"}) - rejected0
		reportf(t, "%d connections opened in %s (%d dial errors): %d closed at accept, %d by the header timeout after %s..%s, %d otherwise, %d never; per_source rejections +%v; victim: %v, %d errors, p50 %s, p99 %s, max %s over %d requests",
			slow, opened.Round(time.Millisecond), dialErrs, atAccept, byTimeout, firstTimeout.Round(time.Millisecond), lastTimeout.Round(time.Millisecond), early, neverClosed, rejected,
			v.statuses, v.errors, percentile(v.latencies, 50).Round(time.Millisecond), percentile(v.latencies, 99).Round(time.Millisecond), percentile(v.latencies, 100).Round(time.Millisecond), len(v.latencies))
		if byTimeout > perSource || byTimeout == 0 {
			t.Errorf("%d connections were held until the header timeout, want at most the per-source limit of %d", byTimeout, perSource)
		}
		if atAccept+byTimeout != slow || neverClosed != 0 || early != 0 {
			t.Errorf("want every connection closed at accept or by the 5 s header timeout")
		}
		if rejected < float64(atAccept) {
			t.Errorf("connections_rejected_total{per_source} grew by %v, want at least %d", rejected, atAccept)
		}
		if !v.ok() || percentile(v.latencies, 100) > time.Second {
			t.Errorf("the victim pod suffered: %v, %d errors, max latency %s", v.statuses, v.errors, percentile(v.latencies, 100))
		}
	})

	t.Run("idle kept-alive connections count against the same limit", func(t *testing.T) {
		const idle = 300
		stop := make(chan struct{})
		victimDone := victimLoad(n, victim, instanceID, 20*time.Millisecond, stop)
		served, refused := 0, 0
		for range idle {
			ctx, cancel := context.WithTimeout(n.ctx, 3*time.Second)
			c, err := dial(ctx, "tcp", "169.254.169.254:80")
			cancel()
			if err != nil {
				refused++
				continue
			}
			t.Cleanup(func() { c.Close() })
			_, _ = io.WriteString(c, "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n")
			_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
			b := make([]byte, 512)
			k, err := c.Read(b)
			if err == nil && strings.HasPrefix(string(b[:k]), "HTTP/1.1 403") {
				served++ // and now it idles, kept alive
			} else {
				refused++ // closed at accept: EOF or reset
			}
		}
		time.Sleep(300 * time.Millisecond) // the victim keeps going with the idle ones held
		close(stop)
		v := <-victimDone
		reportf(t, "%d idle connections: %d served and held, %d refused at accept; victim: %v, %d errors, max %s over %d requests",
			idle, served, refused, v.statuses, v.errors, percentile(v.latencies, 100).Round(time.Millisecond), len(v.latencies))
		if served != perSource || refused != idle-perSource {
			t.Errorf("%d served, %d refused, want %d and %d", served, refused, perSource, idle-perSource)
		}
		if !v.ok() || percentile(v.latencies, 100) > time.Second {
			t.Errorf("the victim pod suffered: %v, %d errors, max latency %s", v.statuses, v.errors, percentile(v.latencies, 100))
		}
	})
}

// TestFloodHitsTheRateLimit: one pod flooding the IMDS for 2 s with 10
// parallel clients exhausts its own token bucket (429; past its share of
// requests in flight, 503) while another pod's requests still succeed, and
// the audit log records the flood within the flooder's denial budget: the
// lines it writes and the ones it counts add up to the refusals.
func TestFloodHitsTheRateLimit(t *testing.T) {
	const rps, burst = 5, 10
	n := startNode(t, relPolicy+"rateLimit: {requestsPerSecond: 5, burst: 10}\n")
	flooder := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "flooder", Labels: map[string]string{"app": "web"}})
	neighbour := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "neighbour", Labels: map[string]string{"app": "web"}})

	stop := make(chan struct{})
	neighbourDone := victimLoad(n, neighbour, instanceID, 150*time.Millisecond, stop)
	var mu sync.Mutex
	statuses := map[int]int{}
	retryAfter := 0
	var wg sync.WaitGroup
	const flood = 2 * time.Second
	begin := time.Now()
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Since(begin) < flood {
				r, _, err := podGet(n.ctx, n.s, flooder, instanceID, nil)
				mu.Lock()
				if err != nil {
					statuses[-1]++
				} else {
					statuses[r.status]++
					if (r.status == 429 || r.status == 503) && r.header.Get("Retry-After") != "" {
						retryAfter++
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(begin)
	close(stop)
	v := <-neighbourDone

	allowed := burst + int(rps*elapsed.Seconds()) + 1
	total := 0
	for _, c := range statuses {
		total += c
	}
	reportf(t, "flood of %d GETs in %s: %v (at most %d may pass), %d 429s with Retry-After; neighbour: %v, %d errors, max %s over %d requests",
		total, elapsed.Round(time.Millisecond), statuses, allowed, retryAfter, v.statuses, v.errors, percentile(v.latencies, 100).Round(time.Millisecond), len(v.latencies))
	if statuses[200] > allowed || statuses[200] < burst {
		t.Errorf("%d of the flood passed, want between %d and %d", statuses[200], burst, allowed)
	}
	refused := statuses[429] + statuses[503]
	if refused != total-statuses[200] || retryAfter != refused || statuses[429] == 0 {
		t.Errorf("statuses %v, %d with Retry-After: want every other request 429 (or 503 past the in-flight share) with Retry-After", statuses, retryAfter)
	}
	if !v.ok() {
		t.Errorf("the neighbour was limited too: %v, %d errors", v.statuses, v.errors)
	}
	// Audit lines are written in batches: wait for the counts to add up.
	var written, suppressed float64
	deadline := time.Now().Add(5 * time.Second)
	for {
		written = 0
		for _, l := range n.audit() {
			if (l.Reason == audit.ReasonRateLimited || l.Reason == audit.ReasonOverloaded) && l.Pod == "flooder" {
				written++
			}
		}
		suppressed = metric(n.metrics(), "metaguard_audit_lines_suppressed_total", nil)
		if int(written+suppressed) >= refused || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if int(written+suppressed) != refused || written > 50+5*elapsed.Seconds()+1 {
		t.Errorf("%v refusals audited and %v counted as suppressed, want %d together, at most the burst of 50 plus 5/s written", written, suppressed, refused)
	}
	// A rate, not a ban: the bucket refills.
	eventually(t, 2*time.Second, func() bool { return n.get(flooder, instanceID, nil).status == 200 })
}
