package audit

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
)

func gzipped(t *testing.T, data []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	if _, err := zw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// readEvery reads a log to its end, keeping records and line errors.
func readEvery(t *testing.T, log []byte) (recs []Record, lineErrs []*LineError, err error) {
	t.Helper()
	r, err := NewReader(bytes.NewReader(log))
	if err != nil {
		return nil, nil, err
	}
	for {
		var rec Record
		err := r.Next(&rec)
		var le *LineError
		switch {
		case errors.Is(err, io.EOF):
			return recs, lineErrs, nil
		case errors.As(err, &le):
			lineErrs = append(lineErrs, le)
		case err != nil:
			return recs, lineErrs, err
		default:
			recs = append(recs, rec)
		}
	}
}

func TestReaderReadsEveryShapeOfLog(t *testing.T) {
	log := realisticLog(t, 50)
	want, err := ReadAll(bytes.NewReader(log))
	if err != nil || len(want) != 50 {
		t.Fatalf("ReadAll: %d records, %v", len(want), err)
	}
	for i, l := range bytes.Split(bytes.TrimSpace(log), []byte("\n")) {
		if ref, err := Decode(l); err != nil || !reflect.DeepEqual(ref, want[i]) {
			t.Fatalf("line %d reads as %+v, Decode says %+v (%v)", i+1, want[i], ref, err)
		}
	}
	half := bytes.Index(log[len(log)/2:], []byte("\n")) + len(log)/2 + 1
	tests := []struct {
		name string
		log  []byte
	}{
		{"a gzip log reads as the plain one", gzipped(t, log)},
		// logrotate's delaycompress, or cat a.gz b.gz.
		{"a gzip log of several members reads every member", append(gzipped(t, log[:half]), gzipped(t, log[half:])...)},
		{"windows line ends and blank lines are skipped", []byte("\r\n\n" + strings.ReplaceAll(string(log), "\n", "\r\n\n"))},
		{"a last line without a newline is read", bytes.TrimSuffix(log, []byte("\n"))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, lineErrs, err := readEvery(t, tt.log)
			if err != nil || len(lineErrs) > 0 {
				t.Fatalf("error %v, line errors %v", err, lineErrs)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("read %d records that differ from the plain log's %d", len(got), len(want))
			}
		})
	}
}

func TestReaderSkipsWhatIsNotARecordAndSaysWhere(t *testing.T) {
	good := string(realisticLog(t, 1))
	long := `{"decision":"allow","path":"/` + strings.Repeat("a", MaxLineBytes) + `"}`
	tests := []struct {
		name   string
		line   string
		is     error
		saying string
	}{
		{"text is a line error", "panic: not even JSON", nil, "invalid character"},
		{"the daemon's own log is not a record", `{"time":"2025-01-01T00:00:00Z","level":"INFO","msg":"policy loaded"}`, ErrNotRecord, "no decision"},
		{"a line longer than the limit is skipped whole", long, ErrLineTooLong, "longer than"},
		{"an unknown decision is a line error", `{"decision":"maybe"}`, nil, "unknown decision"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for name, log := range map[string][]byte{"plain": []byte(good + tt.line + "\n" + good), "gzip": gzipped(t, []byte(good+tt.line+"\n"+good))} {
				recs, lineErrs, err := readEvery(t, log)
				if err != nil || len(recs) != 2 || len(lineErrs) != 1 {
					t.Fatalf("%s: %d records, line errors %v, error %v; want the two good lines around one line error", name, len(recs), lineErrs, err)
				}
				le := lineErrs[0]
				if le.Line != 2 || (tt.is != nil && !errors.Is(le, tt.is)) || !strings.Contains(le.Error(), tt.saying) {
					t.Errorf("%s: %v, want line 2 saying %q", name, le, tt.saying)
				}
			}
			if _, err := ReadAll(strings.NewReader(good + tt.line + "\n")); err == nil || !strings.Contains(err.Error(), "line 2") {
				t.Errorf("ReadAll: %v, want an error naming line 2", err)
			}
		})
	}
}

func TestReaderReportsABrokenLog(t *testing.T) {
	z := gzipped(t, realisticLog(t, 100))
	t.Run("a truncated gzip log is an error, not an end", func(t *testing.T) {
		_, _, err := readEvery(t, z[:len(z)/2])
		var le *LineError
		if err == nil || errors.As(err, &le) {
			t.Fatalf("got %v, want the log's read error", err)
		}
	})
	t.Run("a gzip header that does not read is refused at once", func(t *testing.T) {
		if _, err := NewReader(bytes.NewReader([]byte{0x1f, 0x8b, 0})); err == nil {
			t.Fatal("NewReader accepted a broken gzip header")
		}
	})
}

func TestRecordsOfAReaderShareWhatRepeats(t *testing.T) {
	recs, err := ReadAll(bytes.NewReader(realisticLog(t, 80)))
	if err != nil {
		t.Fatal(err)
	}
	// Lines 0 and 40 are the same pod.
	a, b := recs[0], recs[40]
	if reflect.ValueOf(a.Labels).UnsafePointer() != reflect.ValueOf(b.Labels).UnsafePointer() {
		t.Error("the same label set read twice is two maps")
	}
	if cap(a.QueryKeys) != len(a.QueryKeys) {
		t.Error("a shared query key slice has room to append into")
	}
}
