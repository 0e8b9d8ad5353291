package audit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Options tune a Writer. The zero value writes every line as it is made and
// suppresses nothing.
type Options struct {
	// FlushInterval batches lines and writes them this often (and when
	// BatchBytes are waiting, and on Close). Zero writes each line at once.
	FlushInterval time.Duration
	// DenialRate is how many denial lines per second one source address may
	// write (with DenialBurst at once) before further ones are only counted
	// and summed up in one summary line per source and SummaryInterval.
	// Zero suppresses nothing. Allowed, stripped, audit-deny and
	// credential-path lines are never suppressed.
	DenialRate  float64
	DenialBurst int
	// SummaryInterval is how often suppressed denials are summed up;
	// default DefaultSummaryInterval.
	SummaryInterval time.Duration
	// Log receives the writer's own trouble (a failing destination); nil
	// discards it.
	Log *slog.Logger
	// Registerer receives metaguard_audit_write_errors_total and
	// metaguard_audit_lines_suppressed_total; nil registers nothing.
	Registerer prometheus.Registerer
}

// Defaults for Options.
const (
	DefaultSummaryInterval = 10 * time.Second
	// batchBytes bounds what one flush writes and what a batch holds.
	batchBytes = 64 << 10
)

// Writer turns Records into JSON lines on a destination. It is safe for
// concurrent use. A destination that blocks slows Write rather than losing
// lines; one that fails loses the lines of that write, which is counted and
// logged once per streak of failures.
type Writer struct {
	h      slog.Handler
	batch  *batch // nil when lines are written as they are made
	budget *denialBudget
	opts   Options

	writeErrors prometheus.Counter
	suppressed  prometheus.Counter

	closeOnce sync.Once
}

// NewWriter builds a Writer on dst.
func NewWriter(dst io.Writer, opts Options) (*Writer, error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.SummaryInterval <= 0 {
		opts.SummaryInterval = DefaultSummaryInterval
	}
	if opts.FlushInterval < 0 || opts.DenialRate < 0 || opts.DenialBurst < 0 {
		return nil, errors.New("audit: negative writer option")
	}
	w := &Writer{
		opts: opts,
		writeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "metaguard_audit_write_errors_total",
			Help: "Writes to the audit log destination that failed; their lines are lost.",
		}),
		suppressed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "metaguard_audit_lines_suppressed_total",
			Help: "Denial lines left out of the audit log because their source was over its budget (--audit-deny-rate); each source's are summed up in a summary line.",
		}),
	}
	if opts.Registerer != nil {
		for _, c := range []prometheus.Collector{w.writeErrors, w.suppressed} {
			if err := opts.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("registering audit metrics: %w", err)
			}
		}
	}
	sink := &failures{dst: dst, w: w}
	out := io.Writer(sink)
	if opts.FlushInterval > 0 {
		w.batch = newBatch(sink)
		out = w.batch
	}
	w.h = slog.NewJSONHandler(out, &slog.HandlerOptions{
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			// An audit line is a record, not a message: no level, no msg.
			if len(groups) == 0 && (a.Key == slog.LevelKey || a.Key == slog.MessageKey) {
				return slog.Attr{}
			}
			return a
		},
	})
	if opts.DenialRate > 0 {
		burst := max(opts.DenialBurst, 1)
		w.budget = newDenialBudget(opts.DenialRate, burst)
	}
	return w, nil
}

// Write writes r, or counts it against its source's denial budget.
func (w *Writer) Write(ctx context.Context, r *Record) {
	if w.budget != nil && suppressible(r) {
		if !w.budget.admit(r, time.Now()) {
			w.suppressed.Inc()
			return
		}
	}
	w.encode(ctx, r)
}

// suppressible reports whether r may be left out under a denial budget:
// only refusals, and never credential-path ones, which are the lines an
// investigation of an attack looks for.
func suppressible(r *Record) bool {
	return r.Decision == DecisionDeny && r.Reason != ReasonCredentialPath && r.Suppressed == nil
}

func (w *Writer) encode(ctx context.Context, r *Record) {
	t := r.Time
	if t.IsZero() {
		t = time.Now()
	}
	rec := slog.NewRecord(t, slog.LevelInfo, "", 0)
	src := ""
	if r.SrcIP.IsValid() {
		src = r.SrcIP.String()
	}
	keys := r.QueryKeys
	if keys == nil {
		keys = []string{}
	}
	// The fields go in as one group without a key, which the handler
	// writes inline: a Record keeps five attributes in place and
	// allocates for more, and the group's slices come from a pool.
	la := lineAttrs.Get().(*attrBuffers)
	defer la.put()
	// Grown here, so a pod with many labels grows the pooled buffer once
	// instead of allocating on every line.
	la.labels = slices.Grow(la.labels[:0], len(r.Labels))
	la.fields = append(la.fields,
		slog.String("src_ip", src),
		slog.String("pod", r.Pod),
		slog.String("namespace", r.Namespace),
		slog.String("pod_uid", r.PodUID),
		slog.String("service_account", r.ServiceAccount),
		labelsAttr(la.labels[:0], "labels", r.Labels),
		slog.String("endpoint", r.Endpoint),
		slog.String("method", r.Method),
		slog.String("path", r.Path),
		slog.Any("query_keys", keys),
		slog.String("decision", r.Decision.String()),
		slog.String("rule", r.Rule),
		slog.String("reason", r.Reason.String()),
		slog.Int("status", r.Status),
		slog.Int64("bytes", r.Bytes),
		slog.Float64("duration_ms", float64(r.Duration.Microseconds())/1000),
	)
	if r.Suppressed != nil {
		total := 0
		for _, n := range r.Suppressed {
			total += n
		}
		la.fields = append(la.fields, slog.Int("suppressed", total), countsAttr("suppressed_by_reason", r.Suppressed))
	}
	rec.AddAttrs(slog.Attr{Value: slog.GroupValue(la.fields...)})
	// The handler's only errors are the destination's, which failures
	// counts and reports.
	_ = w.h.Handle(ctx, rec)
}

// attrBuffers are one line's attributes, reused: the handler is done with
// them when Handle returns.
type attrBuffers struct {
	fields, labels []slog.Attr
}

var lineAttrs = sync.Pool{New: func() any {
	return &attrBuffers{fields: make([]slog.Attr, 0, 18), labels: make([]slog.Attr, 0, 16)}
}}

// put clears the buffers, so a pooled one holds no record's strings or
// maps, and returns them to the pool.
func (b *attrBuffers) put() {
	clear(b.fields[:cap(b.fields)])
	clear(b.labels[:cap(b.labels)])
	b.fields, b.labels = b.fields[:0], b.labels[:0]
	lineAttrs.Put(b)
}

// labelsAttr renders a string map as a JSON object through slog's own
// encoder, sorted by key, in buf: slog.Any on a map goes through
// reflection and encoding/json, which cost more than the rest of the line
// together.
func labelsAttr(buf []slog.Attr, key string, m map[string]string) slog.Attr {
	if len(m) == 0 {
		// slog drops an empty group; the field must still be there.
		return slog.Any(key, struct{}{})
	}
	attrs := buf
	for k, v := range m {
		attrs = append(attrs, slog.String(k, v))
	}
	slices.SortFunc(attrs, func(a, b slog.Attr) int { return strings.Compare(a.Key, b.Key) })
	return slog.Attr{Key: key, Value: slog.GroupValue(attrs...)}
}

func countsAttr(key string, m map[Reason]int) slog.Attr {
	attrs := make([]slog.Attr, 0, len(m))
	for r, n := range m {
		attrs = append(attrs, slog.Int(r.String(), n))
	}
	slices.SortFunc(attrs, func(a, b slog.Attr) int { return strings.Compare(a.Key, b.Key) })
	return slog.Attr{Key: key, Value: slog.GroupValue(attrs...)}
}

// Run flushes batched lines every FlushInterval and writes the summaries of
// suppressed denials every SummaryInterval, until ctx is done. It does not
// flush at the end: Close does, once every request has been written.
func (w *Writer) Run(ctx context.Context) {
	var flush <-chan time.Time
	var full <-chan struct{}
	if w.batch != nil {
		t := time.NewTicker(w.opts.FlushInterval)
		defer t.Stop()
		flush, full = t.C, w.batch.full
	}
	var summarize <-chan time.Time
	if w.budget != nil {
		t := time.NewTicker(w.opts.SummaryInterval)
		defer t.Stop()
		summarize = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-flush:
			w.Flush()
		case <-full:
			w.Flush()
		case now := <-summarize:
			w.summarize(ctx, now)
		}
	}
}

func (w *Writer) summarize(ctx context.Context, now time.Time) {
	for _, s := range w.budget.drain(now) {
		w.encode(ctx, &s)
	}
}

// Flush writes the batched lines now.
func (w *Writer) Flush() {
	if w.batch != nil {
		w.batch.flush()
	}
}

// Close writes the pending summaries and flushes. Call it once the last
// Write has returned; the destination is not closed.
func (w *Writer) Close() {
	w.closeOnce.Do(func() {
		if w.budget != nil {
			w.summarize(context.Background(), time.Now())
		}
		w.Flush()
	})
}

// failures counts and reports failed writes to the destination.
type failures struct {
	dst io.Writer
	w   *Writer

	mu      sync.Mutex
	failing bool
}

func (f *failures) Write(p []byte) (int, error) {
	n, err := f.dst.Write(p)
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		f.failing = false
		return n, nil
	}
	f.w.writeErrors.Inc()
	if !f.failing {
		f.failing = true
		f.w.opts.Log.Error("writing the audit log failed; lines are being lost", "error", err)
	}
	return n, err
}

// batch collects whole lines and writes them in one write per flush
// instead of one write syscall per request, which was most of the audit
// log's cost on the request path. A request only appends its line under a
// short lock; the write happens on the flushing goroutine (Run: every
// FlushInterval, and as soon as half a batch waits), with that lock released.
// A request waited for the write when it filled the buffer, and every other
// request then waited behind it on the lock: the most frequent lock wait of
// the slowest requests (BENCHMARKS.md). Only when the destination cannot
// keep up and a whole batch is waiting does a request write it itself, so
// a destination that blocks slows Write rather than losing lines.
// What a hard crash can lose is bounded by the flush interval; a graceful
// stop (Close) loses nothing.
type batch struct {
	dst  io.Writer
	full chan struct{} // half a batch waits: wakes Run

	mu  sync.Mutex
	buf []byte // lines waiting, at most batchBytes

	wmu   sync.Mutex // one write at a time, so lines stay in order
	spare []byte     // the buffer swapped in at the next flush; under wmu
}

func newBatch(dst io.Writer) *batch {
	return &batch{dst: dst, full: make(chan struct{}, 1), buf: make([]byte, 0, batchBytes), spare: make([]byte, 0, batchBytes)}
}

func (b *batch) Write(p []byte) (int, error) {
	if len(p) > batchBytes {
		// Flushing first keeps the lines in order.
		b.wmu.Lock()
		defer b.wmu.Unlock()
		b.flushLocked()
		return b.dst.Write(p)
	}
	b.mu.Lock()
	for len(b.buf)+len(p) > batchBytes {
		b.mu.Unlock()
		b.flush()
		b.mu.Lock()
	}
	b.buf = append(b.buf, p...)
	full := len(b.buf) >= batchBytes/2
	b.mu.Unlock()
	if full {
		select {
		case b.full <- struct{}{}:
		default:
		}
	}
	return len(p), nil
}

func (b *batch) flush() {
	b.wmu.Lock()
	defer b.wmu.Unlock()
	b.flushLocked()
}

// flushLocked writes what is waiting; the caller holds wmu.
func (b *batch) flushLocked() {
	b.mu.Lock()
	out := b.buf
	b.buf, b.spare = b.spare[:0], nil
	b.mu.Unlock()
	if len(out) > 0 {
		// A destination that failed (a full disk) would keep refusing the
		// same bytes; they are dropped (and counted by failures) and the
		// writer goes on.
		_, _ = b.dst.Write(out)
	}
	b.spare = out[:0]
}
