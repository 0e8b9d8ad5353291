package audit

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// lockedBuffer is a destination tests read while the writer writes.
type lockedBuffer struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	broken bool
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.broken {
		return 0, errors.New("disk full")
	}
	return b.buf.Write(p)
}

func (b *lockedBuffer) lines(t *testing.T) []Record {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []Record
	sc := bufio.NewScanner(bytes.NewReader(b.buf.Bytes()))
	for sc.Scan() {
		r, err := Decode(sc.Bytes())
		if err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		out = append(out, r)
	}
	return out
}

var sample = Record{
	Time:  time.Date(2026, 11, 24, 0, 12, 9, 100_000_000, time.UTC),
	SrcIP: netip.MustParseAddr("10.244.0.7"), Pod: "web-5d8f", Namespace: "shop", PodUID: "5f1c",
	ServiceAccount: "web", Labels: map[string]string{"app": "web", "tier": "front"},
	Endpoint: "aws", Method: "GET", Path: "/latest/meta-data/iam/info", QueryKeys: []string{},
	Decision: DecisionDeny, Reason: ReasonNotAllowed, Status: 403, Bytes: 96, Duration: 61 * time.Microsecond,
}

func TestARecordReadsBackAsWritten(t *testing.T) {
	var buf lockedBuffer
	w, err := NewWriter(&buf, Options{})
	if err != nil {
		t.Fatal(err)
	}
	w.Write(context.Background(), &sample)
	got := buf.lines(t)
	if len(got) != 1 || !reflect.DeepEqual(got[0], sample) {
		t.Fatalf("read back %+v\nwant        %+v", got, sample)
	}
	t.Run("the fields are the documented ones, in order", func(t *testing.T) {
		dec := json.NewDecoder(strings.NewReader(buf.buf.String()))
		if _, err := dec.Token(); err != nil {
			t.Fatal(err)
		}
		var keys []string
		for dec.More() {
			k, err := dec.Token()
			if err != nil {
				t.Fatal(err)
			}
			keys = append(keys, k.(string))
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				t.Fatal(err)
			}
		}
		if !reflect.DeepEqual(keys, Fields) {
			t.Fatalf("keys %v, want %v", keys, Fields)
		}
	})
}

func TestEveryReasonSaysWhoDecidesIt(t *testing.T) {
	policy := map[Reason]bool{ReasonAllowed: true, ReasonCredentialsAllowed: true, ReasonCredentialsHidden: true,
		ReasonDefaultAllow: true, ReasonNoRule: true, ReasonNotAllowed: true, ReasonCredentialPath: true}
	for _, r := range Reasons() {
		if !r.Known() || ParseReason(r.String()) != r {
			t.Errorf("%s does not read back as itself", r)
		}
		if r.DecidedByPolicy() != policy[r] {
			t.Errorf("%s: DecidedByPolicy = %v", r, r.DecidedByPolicy())
		}
	}
	if u := ParseReason("invented-by-a-newer-proxy"); u.Known() || u.DecidedByPolicy() || u.String() != "invented-by-a-newer-proxy" {
		t.Errorf("an unknown code reads as %+v: it must be known to nobody", u)
	}
}

func TestBatchedLinesWaitForTheFlushAndCloseLosesNone(t *testing.T) {
	var buf lockedBuffer
	w, err := NewWriter(&buf, Options{FlushInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		w.Write(context.Background(), &sample)
	}
	if n := len(buf.lines(t)); n != 0 {
		t.Fatalf("%d lines before a flush; the test needs them batched", n)
	}
	w.Close()
	if n := len(buf.lines(t)); n != 5 {
		t.Fatalf("%d lines after Close, want 5", n)
	}
}

func TestRunFlushesEveryInterval(t *testing.T) {
	var buf lockedBuffer
	w, err := NewWriter(&buf, Options{FlushInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	defer func() { cancel(); <-done }()
	w.Write(ctx, &sample)
	deadline := time.Now().Add(5 * time.Second)
	for len(buf.lines(t)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the batched line was not written within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestAFailingDestinationIsCountedAndTheWriterGoesOn(t *testing.T) {
	buf := &lockedBuffer{broken: true}
	reg := prometheus.NewRegistry()
	w, err := NewWriter(buf, Options{FlushInterval: time.Hour, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	w.Write(context.Background(), &sample)
	w.Flush()
	if v := testutil.ToFloat64(w.writeErrors); v != 1 {
		t.Fatalf("write errors = %v, want 1", v)
	}
	buf.mu.Lock()
	buf.broken = false
	buf.mu.Unlock()
	w.Write(context.Background(), &sample)
	w.Flush()
	if n := len(buf.lines(t)); n != 1 {
		t.Fatalf("%d lines after the destination recovered, want 1 (the failed batch is dropped, not retried forever)", n)
	}
}

func TestADenialFloodIsSummedUpPerSource(t *testing.T) {
	var buf lockedBuffer
	reg := prometheus.NewRegistry()
	w, err := NewWriter(&buf, Options{DenialRate: 0.001, DenialBurst: 3, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	flooder, neighbour := sample, sample
	neighbour.SrcIP, neighbour.Pod = netip.MustParseAddr("10.244.0.8"), "db-0"
	for i := range 100 {
		r := flooder
		r.Path = "/latest/meta-data/x" + strings.Repeat("y", i%7) // varying paths do not escape the budget
		if i%2 == 1 {
			r.Reason = ReasonUnknownPod
		}
		w.Write(ctx, &r)
	}
	w.Write(ctx, &neighbour)
	never := []Record{flooder, flooder, flooder, flooder}
	never[0].Decision, never[0].Reason = DecisionAllow, ReasonAllowed
	never[1].Decision, never[1].Reason = DecisionStrip, ReasonCredentialsHidden
	never[2].Decision = DecisionAuditDeny
	never[3].Reason = ReasonCredentialPath
	for i := range never {
		w.Write(ctx, &never[i])
	}
	w.Close()

	lines := buf.lines(t)
	counts := map[string]int{}
	var summaries []Record
	for _, l := range lines {
		if l.Suppressed != nil {
			summaries = append(summaries, l)
			continue
		}
		counts[l.Pod+" "+l.Decision.String()+" "+l.Reason.String()]++
	}
	if got := counts["web-5d8f deny not-allowed-by-rules"] + counts["web-5d8f deny unknown-pod"]; got != 3 {
		t.Errorf("the flooder's first %d denials were logged, want the burst of 3", got)
	}
	if counts["db-0 deny not-allowed-by-rules"] != 1 {
		t.Error("the neighbour's denial was lost to the flooder's budget")
	}
	for _, k := range []string{"web-5d8f allow allowed", "web-5d8f strip credentials-stripped", "web-5d8f audit-deny not-allowed-by-rules", "web-5d8f deny credential-path"} {
		if counts[k] != 1 {
			t.Errorf("%q lines = %d: allowed, stripped, audit-deny and credential-path lines are never left out", k, counts[k])
		}
	}
	if len(summaries) != 1 {
		t.Fatalf("%d summaries, want one for the flooder: %+v", len(summaries), summaries)
	}
	s := summaries[0]
	total := 0
	for _, n := range s.Suppressed {
		total += n
	}
	if s.Pod != "web-5d8f" || s.SrcIP != flooder.SrcIP || s.Reason != ReasonDenialsSuppressed || total != 97 ||
		s.Suppressed[ReasonUnknownPod] != 49 || s.Suppressed[ReasonNotAllowed] != 48 {
		t.Errorf("summary %+v, want 97 suppressed for web-5d8f (49 unknown-pod, 48 not-allowed-by-rules)", s)
	}
	if v := testutil.ToFloat64(w.suppressed); v != 97 {
		t.Errorf("metaguard_audit_lines_suppressed_total = %v, want 97", v)
	}
}

func TestASourcePushedOutOfTheBudgetKeepsItsCount(t *testing.T) {
	b := newDenialBudget(1, 1)
	now := time.Now()
	first := sample
	b.admit(&first, now)
	b.admit(&first, now) // suppressed
	for i := range maxBudgetSources {
		r := sample
		r.SrcIP = netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})
		b.admit(&r, now)
	}
	got := b.drain(now)
	if len(got) != 1 || got[0].SrcIP != first.SrcIP || got[0].Suppressed[ReasonNotAllowed] != 1 {
		t.Fatalf("drain = %+v, want the evicted source's summary", got)
	}
}
