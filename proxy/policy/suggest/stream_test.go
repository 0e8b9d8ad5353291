package suggest

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"metaguard.dev/metaguard/proxy/audit"
)

// repeated reads data n times over without holding more than one copy,
// so that whatever memory a read keeps is the suggester's.
type repeated struct {
	data []byte
	n    int
	r    bytes.Reader
}

func (r *repeated) Read(p []byte) (int, error) {
	for r.r.Len() == 0 {
		if r.n == 0 {
			return 0, io.EOF
		}
		r.n--
		r.r.Reset(r.data)
	}
	return r.r.Read(p)
}

// generatedBlock is blockLines audit lines of 60 groups (20 apps in 3
// namespaces) using a dozen paths.
const blockLines = 2000

func generatedBlock(tb testing.TB) []byte {
	recs := make([]audit.Record, 0, blockLines)
	for i := 0; i < blockLines; i++ {
		app := fmt.Sprintf("app-%d", i%20)
		path := fmt.Sprintf("/latest/meta-data/placement/k%d", i%7)
		if i%13 == 0 {
			path = fmt.Sprintf("/latest/meta-data/network/interfaces/macs/m%d/local-ipv4s", i%5)
		}
		recs = append(recs, audit.Record{
			SrcIP: netip.AddrFrom4([4]byte{10, 0, byte(i % 200), byte(i % 250)}), Pod: fmt.Sprintf("%s-%d", app, i%97),
			Namespace: fmt.Sprintf("ns-%d", i%3), PodUID: fmt.Sprintf("u-%d", i), ServiceAccount: "sa",
			Labels: map[string]string{"app": app, "pod-template-hash": "5d8f7"}, Endpoint: "aws", Method: "GET", Path: path,
			QueryKeys: []string{}, Decision: audit.DecisionAllow, Rule: "r", Reason: audit.ReasonAllowed, Status: 200,
		})
	}
	return writeLog(tb, recs...)
}

// TestReadLogStreams reads a 200k-line log, plain and gzip, and checks that
// memory after the read does not grow with the number of lines.
func TestReadLogStreams(t *testing.T) {
	block := generatedBlock(t)
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	zw.Write(block)
	zw.Close()
	// The race detector slows this single-goroutine loop tenfold and has
	// nothing to find in it; a shorter log keeps the suite fast there.
	lines := 200_000
	if raceEnabled {
		lines = 40_000
	}
	tests := []struct {
		name string
		log  io.Reader
	}{
		{fmt.Sprintf("a plain log of %d lines is read in constant memory", lines), &repeated{data: block, n: lines / blockLines}},
		// A gzip stream of many members, as cat *.gz makes.
		{fmt.Sprintf("a gzip log of %d lines is read in constant memory", lines), &repeated{data: z.Bytes(), n: lines / blockLines}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New("config.yaml", []byte(awsConfig), labelBy("app"))
			if err != nil {
				t.Fatal(err)
			}
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			start := time.Now()
			if err := s.ReadLog(context.Background(), "generated", tt.log); err != nil {
				t.Fatal(err)
			}
			took := time.Since(start)
			runtime.GC()
			runtime.ReadMemStats(&after)
			st := s.Stats()
			if st.Lines != int64(lines) || st.Used != int64(lines) || st.Groups != 60 {
				t.Errorf("stats %+v, want %d lines used by 60 groups", st, lines)
			}
			grown := int64(after.HeapAlloc) - int64(before.HeapAlloc)
			t.Logf("%d lines in %v, heap grew by %d KiB", lines, took, grown/1024)
			// The input is about 70 MB; what is kept is 60 groups of a
			// dozen paths.
			if grown > 4<<20 {
				t.Errorf("heap grew by %d bytes after reading; the read keeps lines", grown)
			}
			sug, err := s.Policy()
			if err != nil {
				t.Fatal(err)
			}
			if sug.Rules != 60 {
				t.Errorf("%d rules, want 60", sug.Rules)
			}
		})
	}
}
