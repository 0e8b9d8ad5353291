package fakecloud

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
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
	req, err := http.NewRequest(method, ts.URL+target, nil)
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

var google = map[string]string{"Metadata-Flavor": "Google"}

func TestGCP(t *testing.T) {
	_, ts := newTestServer(t, GCP)
	tests := []struct {
		name     string
		method   string
		target   string
		header   map[string]string
		status   int
		contains []string
		absent   []string
	}{
		{name: "the root answers without a header and names the flavor", target: "/", status: 200, contains: []string{"computeMetadata/"}},
		{name: "the v1 API refuses requests without Metadata-Flavor", target: "/computeMetadata/v1/instance/id", status: 403, contains: []string{"Missing Metadata-Flavor"}},
		{name: "a forwarded request is refused", target: "/computeMetadata/v1/instance/id", header: map[string]string{"Metadata-Flavor": "Google", "X-Forwarded-For": "10.0.0.1"}, status: 400},
		{name: "a leaf is served as text", target: "/computeMetadata/v1/instance/id", header: google, status: 200, contains: []string{"4520031799277581759"}},
		{name: "a directory without its slash redirects", target: "/computeMetadata/v1/instance", header: google, status: 301},
		{name: "a directory lists children with slashes on subdirectories", target: "/computeMetadata/v1/instance/service-accounts/default/", header: google, status: 200, contains: []string{"aliases\n", "token\n", "identity\n"}},
		{name: "a recursive dump is camelCased JSON without tokens", target: "/computeMetadata/v1/instance/?recursive=true", header: google, status: 200,
			contains: []string{`"serviceAccounts"`, `"kube-env"`, `"machineType"`, `"id":4520031799277581759`, `"` + gcpSAEmail + `"`}, absent: []string{"access_token", `"token"`}},
		{name: "alt=text dumps key value lines", target: "/computeMetadata/v1/instance/?recursive=true&alt=text", header: google, status: 200,
			contains: []string{"attributes/cluster-name e2e\n", "service-accounts/default/email " + gcpSAEmail + "\n"}},
		{name: "a token is a JSON document", target: "/computeMetadata/v1/instance/service-accounts/default/token", header: google, status: 200, contains: []string{`"access_token":"ya29.`}},
		{name: "an identity token needs an audience", target: "/computeMetadata/v1/instance/service-accounts/default/identity", header: google, status: 400},
		{name: "an identity token with an audience is a JWT", target: "/computeMetadata/v1/instance/service-accounts/default/identity?audience=https://example.com", header: google, status: 200, contains: []string{"eyJ"}},
		{name: "an unknown path is 404", target: "/computeMetadata/v1/instance/nope", header: google, status: 404},
		{name: "PUT is refused", method: "PUT", target: "/computeMetadata/v1/instance/id", header: google, status: 405},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := tt.method
			if m == "" {
				m = "GET"
			}
			a := get(t, ts, m, tt.target, tt.header)
			if a.status != tt.status {
				t.Fatalf("status %d, want %d; body %q", a.status, tt.status, a.body)
			}
			if got := a.header.Get("Metadata-Flavor"); got != "Google" {
				t.Errorf("Metadata-Flavor = %q, want Google on every answer", got)
			}
			for _, s := range tt.contains {
				if !strings.Contains(a.body, s) {
					t.Errorf("body lacks %q:\n%s", s, a.body)
				}
			}
			for _, s := range tt.absent {
				if strings.Contains(a.body, s) {
					t.Errorf("body has %q:\n%s", s, a.body)
				}
			}
		})
	}
}

func TestGCPWaitForChange(t *testing.T) {
	s, ts := newTestServer(t, GCP)
	const path = "/computeMetadata/v1/instance/attributes/cluster-name"
	first := get(t, ts, "GET", path, google)
	etag := first.header.Get("ETag")
	if etag == "" {
		t.Fatal("no ETag on a leaf")
	}

	t.Run("a long-poll returns when the value changes", func(t *testing.T) {
		done := make(chan answer, 1)
		go func() { done <- get(t, ts, "GET", path+"?wait_for_change=true&last_etag="+etag, google) }()
		// Wait until the poll is parked (recorded) before changing the value.
		deadline := time.Now().Add(5 * time.Second)
		for !hasOpenRequest(s) {
			if time.Now().After(deadline) {
				t.Fatal("long-poll never arrived")
			}
			time.Sleep(10 * time.Millisecond)
		}
		if err := s.SetValue(path, "renamed"); err != nil {
			t.Fatal(err)
		}
		a := <-done
		if a.body != "renamed" || a.header.Get("ETag") == etag {
			t.Fatalf("got %q with ETag %q, want the new value and a new ETag", a.body, a.header.Get("ETag"))
		}
	})
	t.Run("a long-poll with a stale ETag returns at once", func(t *testing.T) {
		a := get(t, ts, "GET", path+"?wait_for_change=true&last_etag="+etag, google)
		if a.body != "renamed" {
			t.Fatalf("got %q", a.body)
		}
	})
	t.Run("a long-poll ends at its timeout with the unchanged value", func(t *testing.T) {
		start := time.Now()
		a := get(t, ts, "GET", path+"?wait_for_change=true&timeout_sec=1", google)
		if a.status != 200 || a.body != "renamed" || time.Since(start) < time.Second {
			t.Fatalf("got %d %q after %v", a.status, a.body, time.Since(start))
		}
	})
}

func hasOpenRequest(s *Server) bool {
	for _, r := range s.Records() {
		if r.Status == 0 {
			return true
		}
	}
	return false
}

func TestAzure(t *testing.T) {
	_, ts := newTestServer(t, Azure)
	md := map[string]string{"Metadata": "true"}
	tests := []struct {
		name     string
		method   string
		target   string
		header   map[string]string
		status   int
		contains string
	}{
		{name: "a request without the Metadata header is refused", target: "/metadata/instance?api-version=2021-02-01", status: 400, contains: "Required metadata header"},
		{name: "a request without api-version is refused", target: "/metadata/instance", header: md, status: 400, contains: "api-version"},
		{name: "a forwarded request is refused", target: "/metadata/instance?api-version=2021-02-01", header: map[string]string{"Metadata": "true", "X-Forwarded-For": "10.0.0.1"}, status: 400},
		{name: "POST is refused", method: "POST", target: "/metadata/instance?api-version=2021-02-01", header: md, status: 405},
		{name: "the instance document is JSON", target: "/metadata/instance?api-version=2021-02-01", header: md, status: 200, contains: `"vmId":"02aab8a4`},
		{name: "a leaf can be read as text", target: "/metadata/instance/compute/location?api-version=2021-02-01&format=text", header: md, status: 200, contains: "westeurope"},
		{name: "a token names the system identity by default", target: "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/", header: md, status: 200, contains: AzureSystemClientID},
		{name: "a token for a user-assigned identity names it", target: "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=r&client_id=" + AzureUserClientID1, header: md, status: 200, contains: AzureUserClientID1},
		{name: "a token for an unknown identity is refused", target: "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=r&client_id=nope", header: md, status: 400, contains: "Identity not found"},
		{name: "a token without resource is refused", target: "/metadata/identity/oauth2/token?api-version=2018-02-01", header: md, status: 400, contains: "resource"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := tt.method
			if m == "" {
				m = "GET"
			}
			a := get(t, ts, m, tt.target, tt.header)
			if a.status != tt.status || !strings.Contains(a.body, tt.contains) {
				t.Fatalf("got %d %q, want %d containing %q", a.status, a.body, tt.status, tt.contains)
			}
		})
	}
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
