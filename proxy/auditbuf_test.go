package proxy

import (
	"bytes"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestBufferedAuditLinesArriveWithinTheInterval(t *testing.T) {
	h := newHarness(t, "aws", ok("x"), func(c *Config) { c.AuditFlushInterval = 50 * time.Millisecond })
	for i := 0; i < 20; i++ {
		h.do(plainPod, "GET", "/latest/meta-data/instance-id", nil)
	}
	if lines := h.waitAudit(20); len(lines) != 20 {
		t.Fatalf("%d audit lines, want 20", len(lines))
	}
}

func TestBufferedAuditIsFlushedWhenServeReturns(t *testing.T) {
	h := newHarness(t, "aws", ok("x"), func(c *Config) { c.AuditFlushInterval = time.Hour })
	for i := 0; i < 5; i++ {
		if resp, _ := h.do(plainPod, http.MethodGet, "/latest/meta-data/instance-id", nil); resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	if n := strings.Count(h.audit.String(), "\n"); n != 0 {
		t.Fatalf("%d lines written before the hour-long interval passed; the test needs them buffered", n)
	}
	h.stop()
	if n := strings.Count(h.audit.String(), "\n"); n != 5 {
		t.Fatalf("%d audit lines after Serve returned, want all 5", n)
	}
}

// flakyWriter fails while broken is set.
type flakyWriter struct {
	mu     sync.Mutex
	broken bool
	buf    bytes.Buffer
}

func (f *flakyWriter) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.broken {
		return 0, errors.New("disk full")
	}
	return f.buf.Write(p)
}

func TestBufferedAuditSurvivesAFailingDestination(t *testing.T) {
	dst := &flakyWriter{broken: true}
	var logs syncBuffer
	b := newBufferedAudit(dst, slog.New(slog.NewTextHandler(&logs, nil)))
	b.Write([]byte("lost-1\n"))
	b.Flush()
	b.Write([]byte("lost-2\n"))
	b.Flush()
	if n := strings.Count(logs.String(), "writing the audit log failed"); n != 1 {
		t.Errorf("the failure was logged %d times, want once per streak", n)
	}
	dst.mu.Lock()
	dst.broken = false
	dst.mu.Unlock()
	b.Write([]byte("kept\n"))
	b.Flush()
	if got := dst.buf.String(); got != "kept\n" {
		t.Fatalf("after recovery the destination holds %q, want only the new line", got)
	}
}

func TestBufferedAuditKeepsLinesWhole(t *testing.T) {
	var dst syncBuffer
	b := newBufferedAudit(&dst, slog.New(slog.DiscardHandler))
	line := strings.Repeat("x", 1000) + "\n"
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				b.Write([]byte(line))
			}
		}()
	}
	wg.Wait()
	b.Flush()
	for i, l := range strings.Split(strings.TrimSuffix(dst.String(), "\n"), "\n") {
		if len(l) != 1000 {
			t.Fatalf("line %d has %d bytes: lines were interleaved", i, len(l))
		}
	}
}
