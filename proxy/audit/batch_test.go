package audit

import (
	"bytes"
	"context"
	"testing"
	"time"
)

// gatedWriter is a destination whose writes block until the gate opens,
// as a slow disk's would; started says a write is waiting.
type gatedWriter struct {
	lockedBuffer
	started chan struct{}
	gate    chan struct{}
}

func (g *gatedWriter) Write(p []byte) (int, error) {
	select {
	case g.started <- struct{}{}:
	default:
	}
	<-g.gate
	return g.lockedBuffer.Write(p)
}

// TestARequestNeverWaitsForTheBatchsWrite: past half a batch, the write is
// Run's, and requests append while the destination is still busy; the
// lines arrive whole and in order.
func TestARequestNeverWaitsForTheBatchsWrite(t *testing.T) {
	var one bytes.Buffer
	probe, _ := NewWriter(&one, Options{})
	probe.Write(context.Background(), &sample)
	lines := batchBytes * 3 / 4 / one.Len() // past half a batch, short of a whole one

	dst := &gatedWriter{started: make(chan struct{}, 1), gate: make(chan struct{})}
	w, err := NewWriter(dst, Options{FlushInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { defer close(ran); w.Run(ctx) }()
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		for i := range lines {
			r := sample
			r.Bytes = int64(i)
			w.Write(ctx, &r)
		}
	}()
	select {
	case <-dst.started:
	case <-time.After(10 * time.Second):
		t.Fatal("half a batch was not written within 10s")
	}
	select {
	case <-wrote:
	case <-time.After(10 * time.Second):
		close(dst.gate)
		t.Fatal("requests waited for the destination while a batch was being written")
	}
	close(dst.gate)
	cancel()
	<-ran
	w.Close()
	got := dst.lines(t)
	if len(got) != lines {
		t.Fatalf("%d lines written, want %d", len(got), lines)
	}
	for i, r := range got {
		if r.Bytes != int64(i) {
			t.Fatalf("line %d is request %d: lines out of order", i, r.Bytes)
		}
	}
}
