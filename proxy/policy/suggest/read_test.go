package suggest

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"strings"
	"testing"

	"metaguard.dev/metaguard/proxy/audit"
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

func TestReadLogInputs(t *testing.T) {
	in := mustParse(t, awsConfig)
	log := logOf(t, in, awsCalls())
	_, plain, _ := suggestFrom(t, awsConfig, labelBy("app"), log)

	half := bytes.Index(log[len(log)/2:], []byte("\n")) + len(log)/2 + 1
	// Rotated logs come gzipped; a gzip file may hold several members
	// (logrotate's delaycompress, cat a.gz b.gz).
	members := append(gzipped(t, log[:half]), gzipped(t, log[half:])...)
	reversed := reverseLines(log)

	tests := []struct {
		name string
		logs [][]byte
	}{
		{"a gzip log gives the same policy as the plain log", [][]byte{gzipped(t, log)}},
		{"a gzip log of several members reads every member", [][]byte{members}},
		{"a log split over several files gives the same policy", [][]byte{log[:half], log[half:]}},
		{"a mix of gzip and plain files gives the same policy", [][]byte{gzipped(t, log[half:]), log[:half]}},
		{"the order of the lines does not change the policy", [][]byte{reversed}},
		{"windows line ends and blank lines are ignored", [][]byte{[]byte("\r\n\n" + strings.ReplaceAll(string(log), "\n", "\r\n\n"))}},
		{"a last line without a newline is read", [][]byte{bytes.TrimSuffix(log, []byte("\n"))}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, got, _ := suggestFrom(t, awsConfig, labelBy("app"), tt.logs...)
			if !bytes.Equal(got.YAML, plain.YAML) {
				t.Errorf("policy differs from the plain log's:\n%s\nwant:\n%s", got.YAML, plain.YAML)
			}
			if st := s.Stats(); st.Malformed != 0 || st.Lines != int64(len(awsCalls())) {
				t.Errorf("stats %+v, want %d lines and none malformed", st, len(awsCalls()))
			}
		})
	}
}

func reverseLines(b []byte) []byte {
	lines := bytes.Split(bytes.TrimSuffix(b, []byte("\n")), []byte("\n"))
	for i, j := 0, len(lines)-1; i < j; i, j = i+1, j-1 {
		lines[i], lines[j] = lines[j], lines[i]
	}
	return append(bytes.Join(lines, []byte("\n")), '\n')
}

func TestReadLogCountsWhatItSkips(t *testing.T) {
	in := mustParse(t, awsConfig)
	good := logOf(t, in, gets(web1, "aws", "/latest/meta-data/instance-id"))
	long := `{"decision":"allow","path":"/` + strings.Repeat("a", audit.MaxLineBytes) + `"}`
	line := func(r audit.Record) string {
		if r.Pod == "" {
			r.Pod, r.Namespace, r.ServiceAccount = "web-1", "shop", "web"
		}
		if r.Endpoint == "" {
			r.Endpoint, r.Method = "aws", "GET"
		}
		return string(writeLog(t, r))
	}
	tests := []struct {
		name  string
		lines string
		want  Stats
		first string
	}{
		{"a line that is not JSON is malformed", "this is not json\n", Stats{Lines: 2, Used: 1, Malformed: 1, Groups: 1}, "log0:1: audit line: invalid character"},
		{"an operational log line is counted as another log's", `{"time":"2025-01-01T00:00:00Z","level":"INFO","msg":"policy loaded","generation":2}` + "\n", Stats{Lines: 2, Used: 1, Other: 1, Groups: 1}, ""},
		{"a line longer than the limit is skipped whole", long + "\n", Stats{Lines: 2, Used: 1, Malformed: 1, Groups: 1}, "longer than"},
		{"an unknown decision is malformed", `{"decision":"maybe"}` + "\n", Stats{Lines: 2, Used: 1, Malformed: 1, Groups: 1}, `unknown decision "maybe"`},
		{"a non-canonical path is malformed", line(audit.Record{Path: "/latest/../x", Decision: audit.DecisionAllow, Reason: audit.ReasonAllowed, Status: 200}),
			Stats{Lines: 2, Used: 1, Malformed: 1, Groups: 1}, "dot segment"},
		{"a method the endpoint never serves is malformed", line(audit.Record{Endpoint: "aws", Method: "DELETE", Path: "/x", Decision: audit.DecisionAllow, Reason: audit.ReasonAllowed, Status: 200}),
			Stats{Lines: 2, Used: 1, Malformed: 1, Groups: 1}, `method DELETE`},
		{"a policy decision naming no pod is malformed", `{"decision":"allow","reason":"allowed","endpoint":"aws","method":"GET","path":"/x","status":200}` + "\n",
			Stats{Lines: 2, Used: 1, Malformed: 1, Groups: 1}, "names no pod"},
		{"a pod without a service account cannot be grouped", `{"decision":"allow","reason":"allowed","pod":"p","namespace":"shop","endpoint":"aws","method":"GET","path":"/x","status":200}` + "\n",
			Stats{Lines: 2, Used: 1, Malformed: 1, Groups: 1}, "no service_account"},
		{"deny lines are counted, not used", line(audit.Record{Path: "/x", Decision: audit.DecisionDeny, Reason: audit.ReasonNotAllowed, Status: 403}),
			Stats{Lines: 2, Used: 1, Denied: 1, Groups: 1}, ""},
		{"lines the proxy decided are counted, not used", line(audit.Record{Path: "/x", Decision: audit.DecisionDeny, Reason: audit.ReasonRateLimited, Status: 429}),
			Stats{Lines: 2, Used: 1, ByProxy: 1, Groups: 1}, ""},
		{"lines of a reason this version does not know are the proxy's", line(audit.Record{Path: "/x", Decision: audit.DecisionAllow, Reason: audit.ParseReason("decided-by-a-newer-proxy"), Status: 200}),
			Stats{Lines: 2, Used: 1, ByProxy: 1, Groups: 1}, ""},
		{"a forwarded request answered 404 is not a use", line(audit.Record{Path: "/latest/meta-data/made-up", Decision: audit.DecisionAuditDeny, Reason: audit.ReasonNotAllowed, Status: 404}),
			Stats{Lines: 2, Used: 1, NotServed: 1, Groups: 1}, ""},
		{"a credential request audit mode refused is for review", line(audit.Record{Path: "/latest/user-data", Decision: audit.DecisionDeny, Reason: audit.ReasonCredentialPath, Status: 403}),
			Stats{Lines: 2, Used: 1, Review: 1, Groups: 2}, ""},
		{"lines of an endpoint the policy lacks are counted, not used", line(audit.Record{Endpoint: "gone", Method: "GET", Path: "/x", Decision: audit.DecisionAllow, Reason: audit.ReasonAllowed, Status: 200}),
			Stats{Lines: 2, Used: 1, UnknownEndpoint: 1, Groups: 1}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, input := range map[string][]byte{"plain": []byte(tt.lines + string(good)), "gzip": gzipped(t, []byte(tt.lines+string(good)))} {
				s, _, _ := suggestFrom(t, awsConfig, labelBy("app"), input)
				st := s.Stats()
				first := st.FirstMalformed
				st.FirstMalformed = ""
				if st != tt.want {
					t.Errorf("stats %+v, want %+v", st, tt.want)
				}
				if !strings.Contains(first, tt.first) || (tt.first == "") != (first == "") {
					t.Errorf("first malformed %q, want it to say %q", first, tt.first)
				}
			}
		})
	}
}

func TestReadLogErrors(t *testing.T) {
	in := mustParse(t, awsConfig)
	log := logOf(t, in, awsCalls())
	z := gzipped(t, log)
	t.Run("a truncated gzip log is an error naming the file", func(t *testing.T) {
		s, err := New("config.yaml", []byte(awsConfig), labelBy("app"))
		if err != nil {
			t.Fatal(err)
		}
		err = s.ReadLog(context.Background(), "audit.log.1.gz", bytes.NewReader(z[:len(z)/2]))
		if err == nil || !strings.Contains(err.Error(), "audit.log.1.gz") {
			t.Errorf("got %v, want an error naming the file", err)
		}
	})
	t.Run("a cancelled context stops a long read", func(t *testing.T) {
		s, err := New("config.yaml", []byte(awsConfig), labelBy("app"))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		err = s.ReadLog(ctx, "big", bytes.NewReader(bytes.Repeat(log, 200)))
		if !errors.Is(err, context.Canceled) {
			t.Errorf("got %v, want context.Canceled", err)
		}
	})
}
