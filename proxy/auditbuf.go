package proxy

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"sync"
	"time"
)

// auditBufferSize bounds what one flush writes.
const auditBufferSize = 64 << 10

// bufferedAudit batches audit lines into one write per flush interval
// instead of one write syscall per request, which was most of the audit
// log's cost on the request path (BENCHMARKS.md). Lines are written whole
// and in order; a full buffer is written at once. What a hard crash can
// lose is bounded by the interval (Envoy's access log makes the same
// trade with a 1 s default); a graceful stop loses nothing.
type bufferedAudit struct {
	dst io.Writer
	log *slog.Logger

	mu      sync.Mutex
	w       *bufio.Writer
	failing bool // the last flush failed; reported once per streak
}

func newBufferedAudit(dst io.Writer, log *slog.Logger) *bufferedAudit {
	return &bufferedAudit{dst: dst, log: log, w: bufio.NewWriterSize(dst, auditBufferSize)}
}

func (b *bufferedAudit) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	// bufio writes a line larger than the free space partly into the
	// buffer and partly straight through; flushing first keeps each
	// line in one write.
	if len(p) > b.w.Available() {
		b.flushLocked()
	}
	return b.w.Write(p)
}

// Flush writes what is buffered.
func (b *bufferedAudit) Flush() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.flushLocked()
}

func (b *bufferedAudit) flushLocked() {
	err := b.w.Flush()
	if err == nil {
		b.failing = false
		return
	}
	if !b.failing {
		b.log.Error("writing the audit log failed; lines are being lost", "error", err)
		b.failing = true
	}
	// A destination that failed (a full disk) would keep the lines and
	// refuse every later one; drop them and go on.
	b.w.Reset(b.dst)
}

// run flushes every interval until ctx is done, then once more.
func (b *bufferedAudit) run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			b.Flush()
			return
		case <-t.C:
			b.Flush()
		}
	}
}
