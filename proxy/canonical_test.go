package proxy

import (
	"net/http"
	"strings"
	"testing"
)

func TestNonCanonicalRequestsAreRefusedAndNeverForwarded(t *testing.T) {
	h := newHarness(t, "aws", ok("x"))
	const host = "Host: 169.254.169.254\r\n"
	tests := []struct {
		name    string
		request string
		want    int
	}{
		{"a dot-dot segment", "GET /latest/../latest/meta-data/iam/ HTTP/1.1\r\n" + host + "\r\n", 400},
		{"a dot segment", "GET /latest/./meta-data/ HTTP/1.1\r\n" + host + "\r\n", 400},
		{"an empty segment", "GET /latest//meta-data/ HTTP/1.1\r\n" + host + "\r\n", 400},
		{"an encoded slash", "GET /latest/meta-data%2Fiam%2Finfo HTTP/1.1\r\n" + host + "\r\n", 400},
		{"encoded dots", "GET /latest/%2e%2e/meta-data/ HTTP/1.1\r\n" + host + "\r\n", 400},
		{"double encoding", "GET /latest/meta-data/%252e HTTP/1.1\r\n" + host + "\r\n", 400},
		{"an encoded ordinary letter", "GET /latest/meta-data/instance-%69d HTTP/1.1\r\n" + host + "\r\n", 400},
		{"a backslash", "GET /latest\\meta-data\\iam HTTP/1.1\r\n" + host + "\r\n", 400},
		{"a semicolon path parameter", "GET /latest/meta-data/iam;x=1/info HTTP/1.1\r\n" + host + "\r\n", 400},
		{"an overlong UTF-8 slash", "GET /latest/meta-data\xc0\xafiam HTTP/1.1\r\n" + host + "\r\n", 400},
		{"a non-ASCII byte", "GET /latest/m\xc3\xa9ta HTTP/1.1\r\n" + host + "\r\n", 400},
		{"an absolute-form target", "GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\n" + host + "\r\n", 400},
		{"an absolute-form target aimed elsewhere", "GET http://evil.example/ HTTP/1.1\r\n" + host + "\r\n", 400},
		{"the asterisk form", "OPTIONS * HTTP/1.1\r\n" + host + "\r\n", 400},
		{"CONNECT", "CONNECT 169.254.169.254:443 HTTP/1.1\r\n" + host + "\r\n", 400},
		{"DELETE", "DELETE /latest/meta-data/ HTTP/1.1\r\n" + host + "\r\n", 405},
		{"POST", "POST /latest/api/token HTTP/1.1\r\n" + host + "Content-Length: 0\r\n\r\n", 405},
		{"TRACE", "TRACE / HTTP/1.1\r\n" + host + "\r\n", 405},
		{"a websocket upgrade", "GET /latest/meta-data/ HTTP/1.1\r\n" + host + "Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 400},
		{"an h2c upgrade", "GET / HTTP/1.1\r\n" + host + "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n", 400},
		{"Expect: 100-continue", "PUT /latest/api/token HTTP/1.1\r\n" + host + "Expect: 100-continue\r\nContent-Length: 1\r\n\r\nx", 400},
		{"a body on GET", "GET /latest/meta-data/ HTTP/1.1\r\n" + host + "Content-Length: 3\r\n\r\nabc", 400},
		{"a chunked GET", "GET /latest/meta-data/ HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 400},
		{"conflicting Content-Length and Transfer-Encoding", "PUT /latest/api/token HTTP/1.1\r\n" + host + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"two Content-Lengths", "PUT /latest/api/token HTTP/1.1\r\n" + host + "Content-Length: 1\r\nContent-Length: 2\r\n\r\nxx", 400},
		{"a query on AWS", "GET /latest/meta-data/instance-id?x=1 HTTP/1.1\r\n" + host + "\r\n", 400},
		{"HTTP/1.1 without Host", "GET /latest/meta-data/ HTTP/1.1\r\n\r\n", 400},
		{"oversized headers", "GET /latest/meta-data/ HTTP/1.1\r\n" + host + "X-Big: " + strings.Repeat("a", 17<<10) + "\r\n\r\n", 431},
		{"a NUL in the path", "GET /latest/meta\x00data HTTP/1.1\r\n" + host + "\r\n", 400},
		{"a fragment", "GET /latest/meta-data/#x HTTP/1.1\r\n" + host + "\r\n", 400},
		{"header injection through a bare LF", "GET /latest/meta-data/ HTTP/1.1\r\n" + host + "X-A: b\nX-Forwarded-For: 1.2.3.4\r\n\r\n", 403},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := h.raw(plainPod, tt.request); got != tt.want {
				t.Errorf("status %d, want %d", got, tt.want)
			}
		})
	}
	if n := len(h.up.received()); n != 0 {
		t.Fatalf("%d refused requests reached the upstream", n)
	}
}

func TestHTTP10WithoutHostIsServedWithTheEndpointsHost(t *testing.T) {
	h := newHarness(t, "aws", ok("i-123"))
	if got := h.raw(plainPod, "GET /latest/meta-data/instance-id HTTP/1.0\r\n\r\n"); got != http.StatusOK {
		t.Fatalf("status %d, want 200", got)
	}
	got := h.up.received()
	if len(got) != 1 || got[0].Host != h.up.addr() {
		t.Fatalf("upstream saw Host %q, want the endpoint address %q", got[0].Host, h.up.addr())
	}
}

func TestQueriesAreCheckedAgainstTheFlavorsKeysAndReencoded(t *testing.T) {
	h := newHarness(t, "gcp", ok("{}"))
	tests := []struct {
		target string
		want   int
		sent   string // raw query the upstream sees
	}{
		{"/computeMetadata/v1/instance/id?alt=text", 200, "alt=text"},
		{"/computeMetadata/v1/instance/id?wait_for_change=true&timeout_sec=1&last_etag=abc", 200, "last_etag=abc&timeout_sec=1&wait_for_change=true"},
		// A stripped listing's long poll is waited for by the proxy: the
		// upstream is asked for the current version.
		{"/computeMetadata/v1/instance/?wait_for_change=true&timeout_sec=1&last_etag=abc", 200, ""},
		{"/computeMetadata/v1/instance/id?alt=te%78t", 200, "alt=text"},
		{"/computeMetadata/v1/instance/id?evil=1", 400, ""},
		{"/computeMetadata/v1/instance/id?alt=text&alt=json", 400, ""},
		{"/computeMetadata/v1/instance/id?alt=text;recursive=true", 400, ""},
		{"/computeMetadata/v1/instance/id?alt=%zz", 400, ""},
		{"/computeMetadata/v1/instance/id?=x", 400, ""},
		{"/computeMetadata/v1/instance/?recursive=TRUE", 400, ""},
		{"/computeMetadata/v1/instance/?recursive=1", 400, ""},
		{"/computeMetadata/v1/instance/?alt=Text", 400, ""},
		{"/computeMetadata/v1/instance/?wait_for_change=yes", 400, ""},
		// Token binding (cloud.google.com/go/auth), with the values it
		// sends only.
		{"/computeMetadata/v1/instance/id?transport=mtls&binding-enforcement=on", 200, "binding-enforcement=on&transport=mtls"},
		{"/computeMetadata/v1/instance/id?transport=tcp", 400, ""},
	}
	for _, tt := range tests {
		resp, _ := h.do(plainPod, "GET", tt.target, http.Header{"Metadata-Flavor": {"Google"}})
		if resp.StatusCode != tt.want {
			t.Errorf("%s: status %d, want %d", tt.target, resp.StatusCode, tt.want)
			continue
		}
		if tt.want == 200 {
			got := h.up.received()
			if q := got[len(got)-1].URL.RawQuery; q != tt.sent {
				t.Errorf("%s: upstream query %q, want %q", tt.target, q, tt.sent)
			}
		}
	}
}

func TestGenericEndpointsPassQueriesUnchanged(t *testing.T) {
	h := newHarness(t, "generic", ok("x"))
	resp, _ := h.do(accessorPod, "GET", "/any/path?b=2&a=%41;c", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if q := h.up.received()[0].URL.RawQuery; q != "b=2&a=%41;c" {
		t.Fatalf("upstream query %q, want it unchanged", q)
	}
}
