//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"metaguard.dev/metaguard/e2e/fakecloud"
	"metaguard.dev/metaguard/e2e/sandbox"
)

// Hostile upstreams the test runs in the cloud namespace, on ports of the
// GCP fake's address, for what the real emulators are too polite to do:
// honour Range and validators on a listing, answer alt=json listings as
// arrays, and answer a PUT without reading its body.
const leakPolicy = `apiVersion: metaguard.dev/v1alpha1
kind: Policy
endpoints:
  - {name: gce-hostile, address: "169.254.169.252:86", flavor: gcp}
  - {name: body-blind, address: "169.254.169.252:87", flavor: generic}
defaultAction: deny
rules:
  - name: web
    podSelector: {matchLabels: {app: web}}
    allow:
      - paths: ["/", "/computeMetadata/v1/**", "/latest/**"]
      - methods: [PUT]
        paths: ["/upload/**"]
credentialPaths: ["/latest/meta-data/iam/**"]
`

var hostileEntries = []string{"attributes/", "credentials/", "hostname", "id", "service-accounts/", "workload-identities", "zone"}

// serveHostileListing answers every listing with hostileEntries, the way
// a server with every HTTP feature would: Range (206), If-None-Match (304),
// an ETag over the whole body, HEAD with the whole body's length, an
// X-Entries header naming every entry, and JSON arrays for alt=json.
func serveHostileListing(w http.ResponseWriter, r *http.Request) {
	body := strings.Join(hostileEntries, "\n") + "\n"
	if r.URL.Query().Get("alt") == "json" {
		b, _ := json.Marshal(hostileEntries)
		body = string(b)
		w.Header().Set("Content-Type", "application/json")
	}
	sum := sha256.Sum256([]byte(body))
	etag := hex.EncodeToString(sum[:8])
	w.Header().Set("Etag", etag)
	w.Header().Set("Metadata-Flavor", "Google")
	w.Header().Set("X-Entries", strings.Join(hostileEntries, ","))
	switch {
	case r.Header.Get("If-None-Match") == etag || r.Header.Get("If-None-Match") == "*":
		w.WriteHeader(http.StatusNotModified)
	case r.Header.Get("Range") != "":
		w.Header().Set("Content-Range", fmt.Sprintf("bytes 0-%d/%d", len(body)-1, len(body)))
		w.WriteHeader(http.StatusPartialContent)
		io.WriteString(w, body)
	default:
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		if r.Method != http.MethodHead {
			io.WriteString(w, body)
		}
	}
}

// serveBodyBlind answers each request it parses on a connection, a PUT
// without reading its body, so a body holding a request is answered too.
func serveBodyBlind(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		body := "i-0123"
		switch {
		case req.Method == http.MethodPut:
			body = "put-ok" // the body stays unread
		case strings.Contains(req.URL.Path, "/iam/"):
			body = "SMUGGLED-NODE-CREDENTIALS"
		}
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	}
}

func startLeakUpstreams(t *testing.T, s *sandbox.Sandbox) {
	t.Helper()
	ln, err := sandbox.NetnsListen(s.CloudNetns(), "tcp", "169.254.169.252:86")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(serveHostileListing), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	raw, err := sandbox.NetnsListen(s.CloudNetns(), "tcp", "169.254.169.252:87")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := raw.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); serveBodyBlind(c) }()
		}
	}()
	t.Cleanup(func() { raw.Close(); wg.Wait() })
}

// TestNothingTheStripDecisionHidesLeaks: through the real redirect, a pod
// asks a hostile upstream for a stripped listing in every shape it can
// think of; it only ever gets the stripped listing, with a length and
// validator that say nothing of the hidden entries.
func TestNothingTheStripDecisionHidesLeaks(t *testing.T) {
	n := startNode(t, leakPolicy)
	startLeakUpstreams(t, n.s)
	web := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "web", Labels: map[string]string{"app": "web"}})
	const listing = "http://169.254.169.252:86/computeMetadata/v1/instance/"
	want := "attributes/\nhostname\nid\nservice-accounts/\nzone\n"
	google := map[string]string{"Metadata-Flavor": "Google"}
	with := func(k, v string) map[string]string { return map[string]string{"Metadata-Flavor": "Google", k: v} }

	base := n.get(web, listing, google)
	if base.status != 200 || base.body != want {
		t.Fatalf("GET: %d %q, want %q", base.status, base.body, want)
	}
	for _, tt := range []struct {
		name   string
		method string
		header map[string]string
	}{
		{"Range", "GET", with("Range", "bytes=0-")},
		{"If-None-Match", "GET", with("If-None-Match", "*")},
		{"If-Range", "GET", with("If-Range", base.header.Get("Etag"))},
		{"HEAD", "HEAD", google},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := n.do(web, tt.method, listing, tt.header)
			if r.status != 200 || (tt.method == "GET" && r.body != want) {
				t.Fatalf("%d %q, want the stripped listing", r.status, r.body)
			}
			if r.header.Get("Content-Length") != fmt.Sprint(len(want)) || r.header.Get("Etag") != base.header.Get("Etag") {
				t.Errorf("Content-Length %q ETag %q, want %d and %q", r.header.Get("Content-Length"), r.header.Get("Etag"), len(want), base.header.Get("Etag"))
			}
			if r.header.Get("X-Entries") != "" || strings.Contains(r.body, "credentials") || strings.Contains(r.body, "workload") {
				t.Errorf("a hidden entry reached the pod: %v %q", r.header, r.body)
			}
		})
	}
	t.Run("alt=json arrays", func(t *testing.T) {
		r := n.get(web, listing+"?alt=json", google)
		var got []string
		if err := json.Unmarshal([]byte(r.body), &got); r.status != 200 || err != nil {
			t.Fatalf("%d %q: %v", r.status, r.body, err)
		}
		if strings.Join(got, ",") != "attributes/,hostname,id,service-accounts/,zone" {
			t.Errorf("entries %q", got)
		}
	})
}

// TestARequestHiddenInABodyNeverAnswersAnotherPod: an upstream that
// answers a PUT without reading its body answers the request hidden in
// the body too; that answer must never be read as the next request's.
func TestARequestHiddenInABodyNeverAnswersAnotherPod(t *testing.T) {
	n := startNode(t, leakPolicy)
	startLeakUpstreams(t, n.s)
	web := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "web", Labels: map[string]string{"app": "web"}})
	other := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "other", Labels: map[string]string{"app": "web"}})
	smuggled := "GET /latest/meta-data/iam/security-credentials/role HTTP/1.1\r\nHost: 169.254.169.252\r\n\r\n"
	put := fmt.Sprintf("PUT /upload/x HTTP/1.1\r\nHost: 169.254.169.252\r\nContent-Length: %d\r\n\r\n%s", len(smuggled), smuggled)
	for range 5 {
		resps, err := rawExchange(n.ctx, web, "169.254.169.252:87", put, 1)
		if err != nil || len(resps) != 1 || resps[0].body != "put-ok" {
			t.Fatalf("PUT: %v %+v", err, resps)
		}
		if r := n.get(other, "http://169.254.169.252:87/latest/meta-data/instance-id", nil); r.status != 200 || r.body != "i-0123" {
			t.Fatalf("the other pod got %d %q: an answer to a request hidden in a body", r.status, r.body)
		}
	}
}

// TestTheGCPIPv6MetadataAddressIsIntercepted: GCE also serves metadata at
// [fd20:ce::254]:80 (the GCP fake does too); the shipped GCP policy
// intercepts it, so on a dual-stack node a pod's request there is judged
// like any other and a denied one never reaches the metadata server.
func TestTheGCPIPv6MetadataAddressIsIntercepted(t *testing.T) {
	policy := `apiVersion: metaguard.dev/v1alpha1
kind: Policy
endpoints:
  - {name: gce, address: "169.254.169.252:80", flavor: gcp}
  - {name: gce-v6, address: "[fd20:ce::254]:80", flavor: gcp}
defaultAction: deny
`
	n := startNode(t, policy)
	web := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "web"})
	n.resetCloud(fakecloud.GCP)
	ctx, cancel := context.WithTimeout(n.ctx, 10*time.Second)
	defer cancel()
	r, _, err := podGet(ctx, n.s, web, "http://[fd20:ce::254]/computeMetadata/v1/instance/service-accounts/default/token", map[string]string{"Metadata-Flavor": "Google"})
	if err != nil {
		t.Fatal(err)
	}
	if recs := n.cloudRecords(fakecloud.GCP); r.status != 403 || len(recs) != 0 {
		t.Fatalf("%d %q with %d requests at the metadata server, want 403 from metaguard and none", r.status, r.body, len(recs))
	}
}
