package fakecloud

import (
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

var google = map[string]string{"Metadata-Flavor": "Google"}

func TestGCP(t *testing.T) {
	_, ts := newTestServer(t, GCP)
	tests := []struct {
		name     string
		method   string
		target   string
		header   map[string]string
		status   int
		ctype    string
		contains []string
		absent   []string
	}{
		{name: "the root answers without a header and names the flavor", target: "/", status: 200, contains: []string{"computeMetadata/"}},
		{name: "the v1 API refuses requests without Metadata-Flavor with Google's error page", target: "/computeMetadata/v1/instance/id", status: 403, ctype: "text/html; charset=UTF-8",
			contains: []string{"Error 403 (Forbidden)", "Missing Metadata-Flavor:Google header."}},
		{name: "a forwarded request is refused", target: "/computeMetadata/v1/instance/id", header: with(google, "X-Forwarded-For", "10.0.0.1"), status: 403},
		{name: "a leaf is served as text", target: "/computeMetadata/v1/instance/id", header: google, status: 200, ctype: "application/text", contains: []string{"4520031799277581759"}},
		{name: "a leaf with alt=json is JSON", target: "/computeMetadata/v1/project/project-id?alt=json", header: google, status: 200, ctype: "application/json", contains: []string{`"metaguard-e2e"`}},
		{name: "instance tags are a JSON array even as text", target: "/computeMetadata/v1/instance/tags", header: google, status: 200, contains: []string{`["gke-e2e-node","http-server"]`}},
		{name: "a directory without its slash redirects", target: "/computeMetadata/v1/instance", header: google, status: 301},
		{name: "a directory lists children with slashes on subdirectories", target: "/computeMetadata/v1/instance/service-accounts/default/", header: google, status: 200,
			contains: []string{"aliases\n", "token\n", "identity\n"}},
		{name: "a directory with alt=json is a JSON array of names", target: "/computeMetadata/v1/instance/service-accounts/default/?alt=json", header: google, status: 200, ctype: "application/json",
			contains: []string{`["aliases","email","identity","scopes","token"]`}},
		{name: "numbered directories list as 0/", target: "/computeMetadata/v1/instance/network-interfaces/", header: google, status: 200, contains: []string{"0/\n"}},
		{name: "a recursive dump is camelCased JSON without tokens", target: "/computeMetadata/v1/instance/?recursive=true", header: google, status: 200, ctype: "application/json",
			contains: []string{`"serviceAccounts"`, `"kube-env"`, `"machineType"`, `"id":4520031799277581759`, `"` + gcpSAEmail + `"`,
				`"networkInterfaces":[{"accessConfigs":[{"externalIp":"203.0.113.10"`, `"tags":["gke-e2e-node","http-server"]`}, absent: []string{"access_token", `"token"`}},
		{name: "alt=text dumps key value lines", target: "/computeMetadata/v1/instance/?recursive=true&alt=text", header: google, status: 200,
			contains: []string{"attributes/cluster-name e2e\n", "service-accounts/default/email " + gcpSAEmail + "\n", "network-interfaces/0/ip 172.31.0.1\n"}},
		{name: "a token is a JSON document", target: "/computeMetadata/v1/instance/service-accounts/default/token?scopes=https://www.googleapis.com/auth/cloud-platform", header: google, status: 200,
			contains: []string{`"access_token":"ya29.`, `"expires_in":3599`}},
		{name: "an identity token needs an audience", target: "/computeMetadata/v1/instance/service-accounts/default/identity", header: google, status: 400},
		{name: "an identity token with an audience is a JWT", target: "/computeMetadata/v1/instance/service-accounts/default/identity?audience=https://example.com&format=full", header: google, status: 200, contains: []string{"eyJ"}},
		{name: "the universe domain is googleapis.com", target: "/computeMetadata/v1/universe/universe-domain", header: google, status: 200, contains: []string{"googleapis.com"}},
		{name: "an unknown path is 404 with Google's error page", target: "/computeMetadata/v1/instance/nope", header: google, status: 404, ctype: "text/html; charset=UTF-8",
			contains: []string{"The requested URL <code>/computeMetadata/v1/instance/nope</code> was not found on this server."}},
		{name: "a wait on a directory listing is refused", target: "/computeMetadata/v1/instance/attributes/?wait_for_change=true", header: google, status: 400},
		{name: "PUT outside guest attributes is refused", method: "PUT", target: "/computeMetadata/v1/instance/id", header: google, status: 405},
		{name: "POST is refused", method: "POST", target: "/computeMetadata/v1/instance/guest-attributes/a/b", header: google, status: 405},
	}
	etag := regexp.MustCompile(`^[0-9a-f]{16}$`)
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
			for k, v := range map[string]string{"Metadata-Flavor": "Google", "Server": "Metadata Server for VM"} {
				if got := a.header.Get(k); got != v {
					t.Errorf("%s = %q, want %q on every answer", k, got, v)
				}
			}
			if tt.ctype != "" && a.header.Get("Content-Type") != tt.ctype {
				t.Errorf("Content-Type = %q, want %q", a.header.Get("Content-Type"), tt.ctype)
			}
			if e := a.header.Get("ETag"); (a.status == 200) != etag.MatchString(e) {
				t.Errorf("ETag %q on a %d", e, a.status)
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

func TestGCPHeadRangeAndValidators(t *testing.T) {
	s, ts := newTestServer(t, GCP)
	const listing = "/computeMetadata/v1/instance/service-accounts/default/"
	full := get(t, ts, "GET", listing, google)

	t.Run("HEAD reports what GET would, without the body", func(t *testing.T) {
		h := get(t, ts, "HEAD", listing, google)
		if h.status != 200 || h.body != "" || h.header.Get("Content-Length") != strconv.Itoa(len(full.body)) || h.header.Get("ETag") != full.header.Get("ETag") {
			t.Fatalf("HEAD: %d %v %q; GET had %d bytes, ETag %s", h.status, h.header, h.body, len(full.body), full.header.Get("ETag"))
		}
	})
	t.Run("Range and If-None-Match are ignored by default", func(t *testing.T) {
		a := get(t, ts, "GET", listing, with(google, "Range", "bytes=0-3", "If-None-Match", full.header.Get("ETag")))
		if a.status != 200 || a.body != full.body {
			t.Fatalf("got %d %q", a.status, a.body)
		}
	})
	s.SetQuirks(Quirks{HonourRange: true, HonourIfNoneMatch: true})
	t.Run("with the quirk a Range gets 206 and part of the body", func(t *testing.T) {
		a := get(t, ts, "GET", listing, with(google, "Range", "bytes=0-3"))
		if a.status != 206 || a.body != full.body[:4] || !strings.HasPrefix(a.header.Get("Content-Range"), "bytes 0-3/") {
			t.Fatalf("got %d %v %q", a.status, a.header, a.body)
		}
	})
	t.Run("with the quirk a matching If-None-Match gets 304", func(t *testing.T) {
		a := get(t, ts, "GET", listing, with(google, "If-None-Match", full.header.Get("ETag")))
		if a.status != 304 || a.body != "" {
			t.Fatalf("got %d %q", a.status, a.body)
		}
	})
}

func TestGCPWaitForChange(t *testing.T) {
	s, ts := newTestServer(t, GCP)
	const path = "/computeMetadata/v1/instance/attributes/cluster-name"
	first := get(t, ts, "GET", path, google)
	etag := first.header.Get("ETag")

	t.Run("a long-poll returns when the value changes", func(t *testing.T) {
		done := make(chan answer, 1)
		go func() { done <- get(t, ts, "GET", path+"?wait_for_change=true&last_etag="+etag, google) }()
		waitOpen(t, s)
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
	t.Run("a recursive long-poll on a directory wakes on a guest attribute write", func(t *testing.T) {
		const ga = "/computeMetadata/v1/instance/guest-attributes/"
		done := make(chan answer, 1)
		s.Reset()
		go func() { done <- get(t, ts, "GET", ga+"?recursive=true&wait_for_change=true&timeout_sec=30", google) }()
		waitOpen(t, s)
		if a := send(t, ts, "PUT", ga+"e2e/greeting", google, "hello"); a.status != 200 {
			t.Fatalf("PUT: %d %q", a.status, a.body)
		}
		if a := <-done; !strings.Contains(a.body, `"e2e":{"greeting":"hello"}`) {
			t.Fatalf("got %q", a.body)
		}
	})
}

func TestGCPGuestAttributes(t *testing.T) {
	_, ts := newTestServer(t, GCP)
	const ga = "/computeMetadata/v1/instance/guest-attributes/"
	if a := send(t, ts, "PUT", ga+"e2e/key", google, "v1"); a.status != 200 {
		t.Fatalf("PUT: %d %q", a.status, a.body)
	}
	if a := get(t, ts, "GET", ga+"e2e/key", google); a.body != "v1" {
		t.Fatalf("GET after PUT: %d %q", a.status, a.body)
	}
	if a := get(t, ts, "GET", ga, google); a.body != "e2e/\nhostkeys/\n" {
		t.Fatalf("listing: %q", a.body)
	}
	if a := send(t, ts, "PUT", ga+"e2e", google, "v"); a.status != 400 {
		t.Errorf("PUT without a key: %d", a.status)
	}
	if a := send(t, ts, "PUT", ga+"e2e/key", google, strings.Repeat("x", gcpGuestAttributeMax+1)); a.status != 400 {
		t.Errorf("PUT of an oversized value: %d", a.status)
	}
	if a := get(t, ts, "DELETE", ga+"e2e/key", google); a.status != 200 {
		t.Fatalf("DELETE: %d", a.status)
	}
	if a := get(t, ts, "GET", ga+"e2e/key", google); a.status != 404 {
		t.Errorf("GET after DELETE: %d", a.status)
	}
	if a := get(t, ts, "DELETE", ga+"e2e/key", google); a.status != 404 {
		t.Errorf("second DELETE: %d", a.status)
	}
}

func TestGCPDNS(t *testing.T) {
	s, err := New(GCP)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.ServeDNS(pc) }()
	t.Cleanup(func() {
		pc.Close()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	ask := func(name string, typ dnsmessage.Type) (*dnsmessage.Message, error) {
		c, err := net.Dial("udp", pc.LocalAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		q, _ := (&dnsmessage.Message{Header: dnsmessage.Header{ID: 7, RecursionDesired: true},
			Questions: []dnsmessage.Question{{Name: dnsmessage.MustNewName(name), Type: typ, Class: dnsmessage.ClassINET}}}).Pack()
		if _, err := c.Write(q); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		buf := make([]byte, 1500)
		n, err := c.Read(buf)
		if err != nil {
			return nil, err
		}
		var m dnsmessage.Message
		if err := m.Unpack(buf[:n]); err != nil {
			t.Fatal(err)
		}
		return &m, nil
	}
	m, err := ask("metadata.google.internal.", dnsmessage.TypeA)
	if err != nil || m.ID != 7 || m.RCode != dnsmessage.RCodeSuccess || len(m.Answers) != 1 ||
		m.Answers[0].Body.(*dnsmessage.AResource).A != gcpMetadataIP {
		t.Fatalf("A metadata.google.internal: %+v %v", m, err)
	}
	if m, err := ask("Metadata.Google.Internal.", dnsmessage.TypeAAAA); err != nil || m.RCode != dnsmessage.RCodeSuccess || len(m.Answers) != 0 {
		t.Errorf("AAAA: %+v %v", m, err)
	}
	if m, err := ask("example.com.", dnsmessage.TypeA); err != nil || m.RCode != dnsmessage.RCodeNameError {
		t.Errorf("another name: %+v %v", m, err)
	}
	s.SetQuirks(Quirks{DNSSilent: true})
	if m, err := ask("metadata.google.internal.", dnsmessage.TypeA); err == nil {
		t.Errorf("a silent resolver answered %+v", m)
	}
}

// waitOpen waits until a request is parked in the server (recorded, no
// status yet), so a test changes a value only once the long-poll waits.
func waitOpen(t *testing.T, s *Server) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, r := range s.Records() {
			if r.Status == 0 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the long-poll never arrived")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
