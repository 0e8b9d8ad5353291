package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"metaguard.dev/metaguard/e2e/fakecloud"
)

// These tests run the real client libraries against the fakes over
// loopback, so a disagreement between a library and a fake shows here
// before the e2e suite puts metaguard between them.

func runJSON(t *testing.T, args ...string) result {
	t.Helper()
	var out bytes.Buffer
	if code := run(args, &out); code != 0 {
		t.Fatalf("podclient %v: exit %d", args, code)
	}
	var res result
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("output %q: %v", out.String(), err)
	}
	return res
}

func TestGCPLibraryAgainstTheFake(t *testing.T) {
	s, err := fakecloud.New(fakecloud.GCP)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	// The library's documented override; it also makes OnGCE true without
	// a probe, which the e2e suite covers instead.
	t.Setenv("GCE_METADATA_HOST", strings.TrimPrefix(ts.URL, "http://"))
	t.Setenv("HOME", t.TempDir())
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", "")

	facts := runJSON(t, "gcp-facts")
	want := map[string]string{
		"on_gce": "true", "project_id": "metaguard-e2e", "numeric_project_id": "123456789012", "zone": "us-central1-a",
		"instance_id": "4520031799277581759", "instance_name": "node-a", "internal_ip": "172.31.0.1",
		"instance_attributes": "cluster-location,cluster-name,kube-env", "instance_tags": "gke-e2e-node,http-server",
		"cluster_name": "e2e", "email": "123456789012-compute@developer.gserviceaccount.com",
		"scopes": "https://www.googleapis.com/auth/cloud-platform",
	}
	for k, v := range want {
		if facts.Values[k] != v {
			t.Errorf("%s = %q, want %q (errors %v)", k, facts.Values[k], v, facts.Errors)
		}
	}
	if tok := runJSON(t, "gcp-token"); !tok.OK || !strings.HasPrefix(tok.Values["token"], "ya29.") || tok.Values["project_id"] != "metaguard-e2e" {
		t.Errorf("gcp-token: %+v", tok)
	}
	if nd := runJSON(t, "gcp-get", "instance/nope"); nd.OK || nd.Status != 404 {
		t.Errorf("a missing value: %+v", nd)
	}
}

// toFake sends every request to the fake instead of 169.254.169.254,
// which azidentity hard-codes; it is the azcore Transport, below the
// library's retry policy.
type toFake struct{ target *url.URL }

func (f toFake) Do(r *http.Request) (*http.Response, error) {
	r.URL.Scheme, r.URL.Host = f.target.Scheme, f.target.Host
	return http.DefaultTransport.RoundTrip(r)
}

func TestAzureLibraryAgainstTheFake(t *testing.T) {
	s, err := fakecloud.New(fakecloud.Azure)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	u, _ := url.Parse(ts.URL)
	azureTransport = toFake{u}
	defer func() { azureTransport = nil }()

	const resource = "https://vault.azure.net"
	if r := runJSON(t, "azure-token", "-client-id", fakecloud.AzureUserClientID1, resource); !r.OK || !strings.Contains(r.Values["token"], fakecloud.AzureUserClientID1) {
		t.Fatalf("client id: %+v", r)
	}
	if r := runJSON(t, "azure-token", "-resource-id", fakecloud.AzureUserResourceID1, resource); !r.OK || !strings.Contains(r.Values["token"], fakecloud.AzureUserClientID1) {
		t.Fatalf("resource id: %+v", r)
	}
	if r := runJSON(t, "azure-token", "-client-id", "00000000-0000-0000-0000-00000000dead", resource); r.OK || r.Status != 400 ||
		!strings.Contains(r.Errors["token"], "the requested identity isn't assigned to this resource") {
		t.Fatalf("an identity the VM lacks: %+v", r)
	}
	s.Reset()
	if err := s.AddFault(fakecloud.Fault{Path: "/metadata/identity/oauth2/token", Status: 429, Count: 2}); err != nil {
		t.Fatal(err)
	}
	r := runJSON(t, "azure-token", "-retry-delay", "10ms", "-object-id", fakecloud.AzureUserObjectID1, resource)
	if !r.OK || len(s.Records()) != 3 {
		t.Fatalf("two 429s then a token: %+v after %d requests", r, len(s.Records()))
	}
	q := s.Records()[2]
	if q.Header.Get("Metadata") != "true" || !strings.Contains(q.RawQuery, "api-version=2018-02-01") {
		t.Errorf("the library's request: %+v", q)
	}
}
