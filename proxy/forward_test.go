package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestIMDSv2TokenPUTArrivesWithoutProxyHeaders(t *testing.T) {
	h := newHarness(t, "aws", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", r.Header.Get("X-Aws-Ec2-Metadata-Token-Ttl-Seconds"))
		io.WriteString(w, "TOKEN")
	})
	resp, body := h.do(plainPod, "PUT", "/latest/api/token", http.Header{
		"X-Aws-Ec2-Metadata-Token-Ttl-Seconds": {"21600"},
		"Via":                                  {"1.1 sneaky"},
		"X-Real-Ip":                            {"10.0.0.1"},
		"Connection":                           {"keep-alive, X-Hop"},
		"X-Hop":                                {"hop-by-hop"},
		"Keep-Alive":                           {"timeout=5"},
	})
	if resp.StatusCode != 200 || body != "TOKEN" {
		t.Fatalf("status %d body %q", resp.StatusCode, body)
	}
	if got := resp.Header.Get("X-Aws-Ec2-Metadata-Token-Ttl-Seconds"); got != "21600" {
		t.Errorf("the TTL response header the SDK needs was not relayed: %q", got)
	}
	up := h.up.received()[0]
	for _, k := range []string{"X-Forwarded-For", "Forwarded", "Via", "X-Real-Ip", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Hop", "Keep-Alive"} {
		if v, ok := up.Header[k]; ok {
			t.Errorf("upstream received %s: %q", k, v)
		}
	}
	if up.Method != "PUT" || up.Header.Get("X-Aws-Ec2-Metadata-Token-Ttl-Seconds") != "21600" {
		t.Errorf("upstream got %s with TTL %q", up.Method, up.Header.Get("X-Aws-Ec2-Metadata-Token-Ttl-Seconds"))
	}
}

func TestForwardingKeepsEndToEndHeadersAndNeverAddsCloudHeaders(t *testing.T) {
	h := newHarness(t, "gcp", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Metadata-Flavor", "Google")
		w.Header().Set("ETag", "abc")
		io.WriteString(w, "ok")
	})
	resp, _ := h.do(plainPod, "GET", "/computeMetadata/v1/instance/id", http.Header{"Metadata-Flavor": {"Google"}, "User-Agent": {"gcloud"}})
	if resp.Header.Get("Metadata-Flavor") != "Google" || resp.Header.Get("Etag") != "abc" {
		t.Errorf("response headers not relayed: %v", resp.Header)
	}
	resp, _ = h.do(plainPod, "GET", "/computeMetadata/v1/instance/id", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	got := h.up.received()
	if got[0].Header.Get("Metadata-Flavor") != "Google" || got[0].Header.Get("User-Agent") != "gcloud" {
		t.Errorf("end-to-end headers lost: %v", got[0].Header)
	}
	if _, added := got[1].Header["Metadata-Flavor"]; added {
		t.Error("Metadata-Flavor was added on the pod's behalf")
	}
}

func TestHostHeaderIsKeptOnlyWhenItNamesTheEndpoint(t *testing.T) {
	h := newHarness(t, "gcp", ok("x"))
	h.do(plainPod, "GET", "/computeMetadata/v1/instance/id", http.Header{"Host": {"metadata.google.internal"}})
	req, _ := http.NewRequest("GET", "http://evil.example/computeMetadata/v1/instance/id", nil)
	resp, err := h.client(plainPod).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	got := h.up.received()
	if len(got) != 2 {
		t.Fatalf("upstream got %d requests", len(got))
	}
	if got[1].Host != h.up.addr() {
		t.Errorf("a Host naming another server was forwarded: %q", got[1].Host)
	}
}

func TestRedirectsAreRelayedNotFollowed(t *testing.T) {
	h := newHarness(t, "aws", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://evil.example/", http.StatusFound)
	})
	resp, _ := h.do(plainPod, "GET", "/latest/meta-data/instance-id", nil)
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "http://evil.example/" {
		t.Fatalf("status %d location %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	if len(h.up.received()) != 1 {
		t.Fatal("the redirect was followed")
	}
}

func TestUpstreamDownIs502AndSlowIs504(t *testing.T) {
	t.Run("down", func(t *testing.T) {
		h := newHarness(t, "aws", ok("x"))
		h.up.Close()
		resp, body := h.do(plainPod, "GET", "/latest/meta-data/instance-id", nil)
		if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, "upstream") {
			t.Fatalf("status %d body %q", resp.StatusCode, body)
		}
	})
	t.Run("slow", func(t *testing.T) {
		release := make(chan struct{})
		h := newHarness(t, "aws", func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}, func(c *Config) { c.UpstreamTimeout = 100 * time.Millisecond })
		defer close(release)
		resp, _ := h.do(plainPod, "GET", "/latest/meta-data/instance-id", nil)
		if resp.StatusCode != http.StatusGatewayTimeout {
			t.Fatalf("status %d, want 504", resp.StatusCode)
		}
	})
}

func TestGCPLongPollOutlivesTheUpstreamTimeoutAndStreams(t *testing.T) {
	const upstreamTimeout = 100 * time.Millisecond
	arrived := make(chan time.Time, 1)
	h := newHarness(t, "gcp", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("wait_for_change") == "true" {
			arrived <- time.Now()
			// The change comes after the upstream timeout has passed: only
			// the long poll's own timeout_sec keeps the request alive.
			select {
			case <-time.After(3 * upstreamTimeout):
			case <-r.Context().Done():
				return
			}
		}
		w.Header().Set("ETag", "e2")
		io.WriteString(w, "changed")
	}, func(c *Config) { c.UpstreamTimeout = upstreamTimeout })
	resp, body := h.do(plainPod, "GET", "/computeMetadata/v1/instance/attributes/x?wait_for_change=true&timeout_sec=2&last_etag=e1", http.Header{"Metadata-Flavor": {"Google"}})
	select {
	case at := <-arrived:
		if held := time.Since(at); held <= upstreamTimeout {
			t.Fatalf("the upstream held the poll only %s, not past the %s upstream timeout", held, upstreamTimeout)
		}
	default:
		t.Fatal("the long poll never reached the upstream")
	}
	if resp.StatusCode != 200 || body != "changed" {
		t.Fatalf("long poll: status %d body %q", resp.StatusCode, body)
	}
}

func TestLongPollIsCancelledWhenTheClientGoes(t *testing.T) {
	for _, target := range []string{
		"/computeMetadata/v1/instance/attributes/x?wait_for_change=true&timeout_sec=60",
		// A stripped listing, whose long poll the proxy runs itself.
		"/computeMetadata/v1/instance/?wait_for_change=true&timeout_sec=60",
	} {
		t.Run(target, func(t *testing.T) {
			arrived, cancelled := make(chan struct{}), make(chan struct{})
			h := newHarness(t, "gcp", func(w http.ResponseWriter, r *http.Request) {
				close(arrived)
				<-r.Context().Done()
				close(cancelled)
			})
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: plainPod.AsSlice()}}
			c, err := d.Dial("tcp", h.addr)
			if err != nil {
				t.Fatal(err)
			}
			io.WriteString(c, "GET "+target+" HTTP/1.1\r\nHost: metadata.google.internal\r\nMetadata-Flavor: Google\r\n\r\n")
			select {
			case <-arrived:
			case <-time.After(5 * time.Second):
				t.Fatal("the long poll never reached the upstream")
			}
			c.Close()
			select {
			case <-cancelled:
			case <-time.After(5 * time.Second):
				t.Fatal("the upstream long poll was not cancelled after the client left")
			}
		})
	}
}

func TestTimedOutRecognisesEverySpellingOfADeadline(t *testing.T) {
	expired, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	live := context.Background()
	connectCut := &net.OpError{Op: "dial", Net: "tcp", Err: os.ErrDeadlineExceeded}
	for _, tc := range []struct {
		name string
		ctx  context.Context
		err  error
		want bool
	}{
		{"context deadline", live, fmt.Errorf("x: %w", context.DeadlineExceeded), true},
		{"connect cut short by the poller", live, fmt.Errorf("dialing upstream: %w", connectCut), true},
		{"the request's deadline passed, whatever the error", expired, errors.New("connection reset"), true},
		{"refused", live, &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, false},
		{"cancelled by the client", live, context.Canceled, false},
	} {
		if got := timedOut(tc.ctx, tc.err); got != tc.want {
			t.Errorf("%s: timedOut = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestGCPAnswersOfTheProxysOwnSayMetadataFlavor: Google's client library
// decides it is on GCE from Metadata-Flavor: Google on any answer to GET /,
// so metaguard's own refusals on a GCP endpoint carry it, once, and a
// forwarded answer carries only the upstream's.
func TestGCPAnswersOfTheProxysOwnSayMetadataFlavor(t *testing.T) {
	h := newHarness(t, "gcp", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Metadata-Flavor", "Google")
		if r.URL.Path == "/computeMetadata/v1/" {
			// An answer the strip replaces with one of its own.
			http.Error(w, "not found", http.StatusNotFound)
			return
		}
		io.WriteString(w, "ok")
	})
	for _, tt := range []struct {
		name   string
		src    netip.Addr
		method string
		target string
		want   int
	}{
		{"a denial", plainPod, "GET", "/computeMetadata/v1/instance/service-accounts/default/token", 403},
		{"an unknown pod", unknownPod, "GET", "/", 503},
		{"a malformed request", plainPod, "GET", "/computeMetadata/v1/instance/%2e%2e/", 400},
		{"a method not served", plainPod, "POST", "/", 405},
		{"a forwarded answer", plainPod, "GET", "/computeMetadata/v1/instance/id", 200},
		{"a stripped listing", plainPod, "GET", "/computeMetadata/v1/instance/", 200},
		{"the strip's own answer to an upstream error", plainPod, "GET", "/computeMetadata/v1/", 404},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, _ := h.do(tt.src, tt.method, tt.target, http.Header{"Metadata-Flavor": {"Google"}})
			if resp.StatusCode != tt.want || strings.Join(resp.Header.Values("Metadata-Flavor"), ",") != "Google" {
				t.Fatalf("status %d Metadata-Flavor %q, want %d and exactly one Google", resp.StatusCode, resp.Header.Values("Metadata-Flavor"), tt.want)
			}
		})
	}
	aws := newHarness(t, "aws", ok("x"))
	if resp, _ := aws.do(plainPod, "GET", "/latest/meta-data/hostname", nil); resp.Header.Get("Metadata-Flavor") != "" {
		t.Error("an AWS denial says Metadata-Flavor")
	}
}
