package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

// realisticLog is n lines as the Writer writes them for a node of 40 pods
// in 8 workloads: what a reader of a real log meets.
func realisticLog(tb testing.TB, n int) []byte {
	tb.Helper()
	var buf bytes.Buffer
	w, err := NewWriter(&buf, Options{})
	if err != nil {
		tb.Fatal(err)
	}
	paths := []string{
		"/latest/api/token", "/latest/meta-data/instance-id", "/latest/meta-data/placement/region",
		"/latest/meta-data/placement/availability-zone", "/latest/meta-data/", "/latest/dynamic/instance-identity/document",
		"/latest/meta-data/iam/security-credentials/", "/latest/meta-data/iam/security-credentials/node-role",
		"/latest/meta-data/network/interfaces/macs/0e:49:61:0f:c3:11/local-ipv4s",
	}
	t0 := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	for i := range n {
		app := fmt.Sprintf("app-%d", i%8)
		pod := i % 40
		r := Record{
			Time:  t0.Add(time.Duration(i) * 1371 * time.Microsecond),
			SrcIP: netip.AddrFrom4([4]byte{10, 244, 1, byte(pod)}), Pod: fmt.Sprintf("%s-5d8f7c9b4-%05d", app, pod),
			Namespace: fmt.Sprintf("team-%d", i%3), PodUID: fmt.Sprintf("3b1e6a0c-%04d-4c1f-9a55-1d2c3e4f5a6b", pod),
			ServiceAccount: app, Labels: map[string]string{"app": app, "pod-template-hash": "5d8f7c9b4", "app.kubernetes.io/part-of": "shop"},
			Endpoint: "aws", Method: "GET", Path: paths[i%len(paths)], QueryKeys: []string{},
			Decision: DecisionAllow, Rule: "node-facts", Reason: ReasonAllowed, Status: 200, Bytes: int64(12 + i%300),
			Duration: time.Duration(200+i%900) * time.Microsecond,
		}
		switch i % len(paths) {
		case 0:
			r.Method = "PUT"
		case 4:
			r.Decision, r.Reason = DecisionStrip, ReasonCredentialsHidden
		case 6, 7:
			r.Decision, r.Reason, r.Status, r.Rule = DecisionDeny, ReasonCredentialPath, 403, ""
		}
		w.Write(context.Background(), &r)
	}
	return buf.Bytes()
}

func decodeSeeds(tb testing.TB) [][]byte {
	seeds := bytes.Split(bytes.TrimSpace(realisticLog(tb, 12)), []byte("\n"))
	for _, l := range []string{
		`{"pod":"a","labels":{"app":"x"},"labels":{"b":"c"},"query_keys":["k"],"query_keys":[],"decision":"allow"}`,
		`{"pod":"a","labels":{"app":"x"},"labels":null,"path":"/p","path":null,"decision":"allow"}`,
		`{"labels":{"app":"x","app":"y"},"decision":"allow"}`,
		`{"Path":"/upper","decision":"allow"}`,
		`{"PATH":"/upper","decision":"allow"}`,
		`{"path":"/a\/b","decision":"allow"}`,
		`{"path":"/caf\u00e9","decision":"allow"}`,
		"{\"path\":\"/caf\xc3\xa9\",\"decision\":\"allow\"}",
		"{\"path\":\"/bad\xff\",\"decision\":\"allow\"}",
		`{"status":0123,"decision":"allow"}`,
		`{"status":-1.5e+3,"bytes":0,"duration_ms":1E2,"decision":"deny"}`,
		`{"status":1.}`,
		`{"status":99999999999999999999,"decision":"deny"}`,
		`{"duration_ms":1e400,"decision":"deny"}`,
		`{"time":"2025-01-01T00:00:00+02:00","decision":"deny"}`,
		`{"time":"2025-01-01 00:00:00Z","decision":"deny"}`,
		`{"time":null,"decision":"deny"}`,
		`{"src_ip":"10.0.0.300","decision":"deny"}`,
		`{"src_ip":"fd00::1","decision":"deny"}`,
		`{"extra":{"a":[1,2,{"b":null}],"c":true},"decision":"deny"}`,
		`{"labels":{"app":1},"decision":"deny"}`,
		`{"query_keys":["a",1],"decision":"deny"}`,
		`{"labels":{"app":null},"decision":"deny"}`,
		`{"suppressed":3,"suppressed_by_reason":{"unknown-pod":3},"decision":"deny","reason":"denials-suppressed"}`,
		` { "pod" : "a" , "labels" : { "app" : "v" } , "decision" : "allow" } `,
		`{"pod":"a",}`,
		`{"pod":"a"} x`,
		`{"decision":"maybe"}`,
		`{"time":"2025-01-01T00:00:00Z","level":"INFO","msg":"policy loaded"}`,
		`[1,2]`,
		`null`,
		`{}`,
		`{"a":tru}`,
	} {
		seeds = append(seeds, []byte(l))
	}
	return seeds
}

// FuzzDecode holds the direct path to encoding/json's reading: when it
// accepts a line, encoding/json accepts it too and reads the same fields,
// and the record (or the error) a Reader gives is Decode's.
func FuzzDecode(f *testing.F) {
	for _, s := range decodeSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		checkDecode(t, &decoder{}, line)
	})
}

func TestTheDirectDecoderAgreesWithEncodingJSON(t *testing.T) {
	d := &decoder{} // shared, so cached label sets and keys are exercised
	for _, s := range decodeSeeds(t) {
		t.Run(string(s), func(t *testing.T) { checkDecode(t, d, s) })
	}
	t.Run("the writer's lines all take the direct path", func(t *testing.T) {
		for _, l := range bytes.Split(bytes.TrimSpace(realisticLog(t, 200)), []byte("\n")) {
			var j jsonRecord
			if !d.fast(l, &j) {
				t.Fatalf("the direct path gave up on a line the Writer wrote: %s", l)
			}
		}
	})
}

func checkDecode(t *testing.T, d *decoder, line []byte) {
	t.Helper()
	var fast, ref jsonRecord
	ok := d.fast(line, &fast)
	refErr := json.Unmarshal(line, &ref)
	if ok {
		if refErr != nil {
			t.Fatalf("direct path accepted %q, encoding/json refuses it: %v", line, refErr)
		}
		if !reflect.DeepEqual(fast, ref) {
			t.Fatalf("%q\ndirect:        %+v\nencoding/json: %+v", line, fast, ref)
		}
	}
	var got Record
	err := d.decode(line, &got)
	want, wantErr := Decode(line)
	if (err == nil) != (wantErr == nil) || !reflect.DeepEqual(got, want) {
		t.Fatalf("%q\ndecoder: %+v, %v\nDecode:  %+v, %v", line, got, err, want, wantErr)
	}
}

func TestDecodeSaysWhatALineIs(t *testing.T) {
	tests := []struct {
		name, line string
		notRecord  bool
		msg        string
	}{
		{"the daemon's own log line is not a record", `{"time":"2025-01-01T00:00:00Z","level":"INFO","msg":"policy loaded"}`, true, "no decision"},
		{"an unknown decision is an error, not another log's line", `{"decision":"maybe"}`, false, `unknown decision "maybe"`},
		{"text is an error", `panic: not even JSON`, false, "invalid character"},
		{"a bad source address is an error", `{"decision":"deny","src_ip":"10.0.0.300"}`, false, "src_ip"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode([]byte(tt.line))
			if err == nil || errors.Is(err, ErrNotRecord) != tt.notRecord || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("Decode(%s) = %v, want an error saying %q (not a record: %v)", tt.line, err, tt.msg, tt.notRecord)
			}
		})
	}
}

// BenchmarkDecode reads the same realistic log with the direct decoder and
// with encoding/json (Decode), side by side: the direct path is kept only
// while it clearly pays.
func BenchmarkDecode(b *testing.B) {
	lines := bytes.Split(bytes.TrimSpace(realisticLog(b, 4000)), []byte("\n"))
	size := 0
	for _, l := range lines {
		size += len(l) + 1
	}
	b.Run("direct", func(b *testing.B) {
		var d decoder
		var r Record
		b.SetBytes(int64(size))
		b.ReportAllocs()
		for b.Loop() {
			for _, l := range lines {
				if err := d.decode(l, &r); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(lines)), "ns/line")
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.SetBytes(int64(size))
		b.ReportAllocs()
		for b.Loop() {
			for _, l := range lines {
				if _, err := Decode(l); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(lines)), "ns/line")
	})
}
