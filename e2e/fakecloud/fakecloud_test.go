package fakecloud

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func newTestServer(t *testing.T, f Flavor) (*Server, *httptest.Server) {
	t.Helper()
	s, err := New(f)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	return s, ts
}

type answer struct {
	status int
	header http.Header
	body   string
}

func get(t *testing.T, ts *httptest.Server, method, target string, hdr map[string]string) answer {
	t.Helper()
	return send(t, ts, method, target, hdr, "")
}

func send(t *testing.T, ts *httptest.Server, method, target string, hdr map[string]string, body string) answer {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, ts.URL+target, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	// Redirects are part of what is tested, never followed.
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return answer{resp.StatusCode, resp.Header, string(b)}
}

func with(h map[string]string, kv ...string) map[string]string {
	out := map[string]string{}
	for k, v := range h {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

func TestRecordsKeepTheRequestAsReceived(t *testing.T) {
	s, ts := newTestServer(t, GCP)
	get(t, ts, "GET", "/computeMetadata/v1/instance/%69d?alt=json&recursive=false", map[string]string{"Metadata-Flavor": "Google", "X-Probe": "1"})
	get(t, ts, "GET", "/computeMetadata/v1/instance/id", nil)

	ctl := httptest.NewServer(s.ControlHandler())
	defer ctl.Close()
	resp, err := http.Get(ctl.URL + "/records")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var recs []Record
	if err := json.NewDecoder(resp.Body).Decode(&recs); err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 {
		t.Fatalf("got %d records, want 2", len(recs))
	}
	r := recs[0]
	if r.Method != "GET" || r.Path != "/computeMetadata/v1/instance/%69d" || r.RawQuery != "alt=json&recursive=false" ||
		r.Header.Get("X-Probe") != "1" || r.Status != 200 {
		t.Errorf("first record = %+v", r)
	}
	if recs[1].Status != 403 {
		t.Errorf("second record status = %d, want 403", recs[1].Status)
	}

	req, _ := http.NewRequest("DELETE", ctl.URL+"/records", nil)
	if _, err := http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	}
	if n := len(s.Records()); n != 0 {
		t.Errorf("%d records after reset", n)
	}
}

func TestControlSetsQuirksAndFaults(t *testing.T) {
	s, ts := newTestServer(t, Azure)
	ctl := httptest.NewServer(s.ControlHandler())
	defer ctl.Close()
	put := func(method, path, body string) int {
		req, _ := http.NewRequest(method, ctl.URL+path, strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if c := put("PUT", "/quirks", `{"honour_range":true}`); c != 204 || !s.Quirks().HonourRange {
		t.Fatalf("PUT /quirks: %d, quirks %+v", c, s.Quirks())
	}
	if c := put("PUT", "/quirks", `{"honor_range":true}`); c != 400 {
		t.Errorf("a misspelt quirk: %d, want 400", c)
	}
	const tok = "/metadata/identity/oauth2/token"
	if c := put("POST", "/faults", `{"path":"`+tok+`","status":429,"count":2,"retry_after":"1"}`); c != 204 {
		t.Fatalf("POST /faults: %d", c)
	}
	if c := put("POST", "/faults", `{"path":"`+tok+`","status":200,"count":1}`); c != 400 {
		t.Errorf("a fault that is not an error: %d, want 400", c)
	}
	md := map[string]string{"Metadata": "true"}
	target := tok + "?api-version=2018-02-01&resource=https://vault.azure.net"
	for i := range 2 {
		a := get(t, ts, "GET", target, md)
		if a.status != 429 || a.header.Get("Retry-After") != "1" || !strings.Contains(a.body, `"error":"too_many_requests"`) {
			t.Fatalf("faulted request %d: %d %v %q", i, a.status, a.header, a.body)
		}
	}
	if a := get(t, ts, "GET", target, md); a.status != 200 {
		t.Fatalf("after the faults: %d %q", a.status, a.body)
	}
	put("POST", "/faults", `{"path":"`+tok+`","status":500,"count":5}`)
	if c := put("DELETE", "/faults", ""); c != 204 {
		t.Fatalf("DELETE /faults: %d", c)
	}
	if a := get(t, ts, "GET", target, md); a.status != 200 {
		t.Fatalf("after clearing the faults: %d %q", a.status, a.body)
	}
	recs := s.Records()
	if len(recs) != 4 || recs[0].Status != 429 || recs[3].Status != 200 {
		t.Errorf("faulted requests must be recorded with their status: %+v", recs)
	}
}
