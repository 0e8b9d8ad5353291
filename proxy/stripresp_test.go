package proxy

import (
	"crypto/md5"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// hostileListing is an upstream that honours every feature a pod could
// turn against the stripper: Range (206 with the raw bytes), validators
// (304), HEAD with the unstripped length, an ETag over the unstripped
// body, and alt=json listings as JSON arrays.
func hostileListing(entries []string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body := strings.Join(entries, "\n") + "\n"
		if r.URL.Query().Get("alt") == "json" {
			b, _ := json.Marshal(entries)
			body = string(b)
			w.Header().Set("Content-Type", "application/json")
		}
		sum := sha256.Sum256([]byte(body))
		etag := hex.EncodeToString(sum[:8])
		w.Header().Set("Etag", etag)
		w.Header().Set("X-Listing", strings.Join(entries, ","))
		w.Header().Set("Metadata-Flavor", "Google")
		if r.Header.Get("If-None-Match") == etag {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		if rg := r.Header.Get("Range"); rg != "" {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes 0-%d/%d", len(body)-1, len(body)))
			w.WriteHeader(http.StatusPartialContent)
			io.WriteString(w, body)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		if r.Method == http.MethodHead {
			return
		}
		io.WriteString(w, body)
	}
}

var gcpInstanceEntries = []string{"attributes/", "hostname", "id", "service-accounts/", "credentials/", "gce-workload-certificates/", "zone"}

func TestAStripDecisionCannotBeSideSteppedByTheShapeOfTheResponse(t *testing.T) {
	h := newHarness(t, "gcp", hostileListing(gcpInstanceEntries))
	const listing = "/computeMetadata/v1/instance/"
	want := "attributes/\nhostname\nid\nservice-accounts/\nzone\n"
	google := http.Header{"Metadata-Flavor": {"Google"}}
	with := func(k, v string) http.Header { h := google.Clone(); h.Set(k, v); return h }

	resp, body := h.do(plainPod, "GET", listing, google)
	if resp.StatusCode != 200 || body != want {
		t.Fatalf("GET: status %d body %q, want %q", resp.StatusCode, body, want)
	}
	etag := resp.Header.Get("Etag")
	tests := []struct {
		name   string
		method string
		target string
		header http.Header
	}{
		{"Range asks for the raw bytes", "GET", listing, with("Range", "bytes=0-")},
		{"If-Range with Range", "GET", listing, with("If-Range", "x")},
		{"If-None-Match with the upstream's ETag of the full body", "GET", listing, with("If-None-Match", "*")},
		{"If-Modified-Since", "GET", listing, with("If-Modified-Since", "Mon, 01 Jan 2001 00:00:00 GMT")},
		{"HEAD", "HEAD", listing, google},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := h.do(plainPod, tt.method, tt.target, tt.header)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d, want 200 (the stripped listing)", resp.StatusCode)
			}
			if tt.method == "HEAD" {
				if resp.Header.Get("Content-Length") != strconv.Itoa(len(want)) {
					t.Errorf("HEAD Content-Length %q, want the stripped GET's %d", resp.Header.Get("Content-Length"), len(want))
				}
			} else if body != want {
				t.Errorf("body %q, want %q", body, want)
			}
			if got := resp.Header.Get("Etag"); got != etag {
				t.Errorf("ETag %q, want the stripped body's %q", got, etag)
			}
			for k := range resp.Header {
				switch k {
				case "Content-Length", "Content-Type", "Etag", "Metadata-Flavor", "Date":
				default:
					t.Errorf("header %s relayed: %q", k, resp.Header.Values(k))
				}
			}
			up := h.up.received()
			last := up[len(up)-1]
			if last.Method != "GET" {
				t.Errorf("upstream got %s, want GET", last.Method)
			}
			for _, k := range []string{"Range", "If-Range", "If-None-Match", "If-Modified-Since", "Accept-Encoding"} {
				if v, ok := last.Header[k]; ok {
					t.Errorf("upstream received %s: %q", k, v)
				}
			}
		})
	}
	t.Run("a JSON array listing is stripped", func(t *testing.T) {
		resp, body := h.do(plainPod, "GET", listing+"?alt=json", google)
		var got []string
		if err := json.Unmarshal([]byte(body), &got); resp.StatusCode != 200 || err != nil {
			t.Fatalf("status %d body %q: %v", resp.StatusCode, body, err)
		}
		if !reflect.DeepEqual(got, []string{"attributes/", "hostname", "id", "service-accounts/", "zone"}) {
			t.Errorf("entries %q", got)
		}
	})
	t.Run("the ETag does not change when only hidden entries do", func(t *testing.T) {
		h2 := newHarness(t, "gcp", hostileListing(append(gcpInstanceEntries, "workload-identities")))
		resp, body := h2.do(plainPod, "GET", listing, google)
		if body != want || resp.Header.Get("Etag") != etag {
			t.Errorf("body %q ETag %q, want %q and %q", body, resp.Header.Get("Etag"), want, etag)
		}
	})
}

func TestStripAnswerByStatus(t *testing.T) {
	tgt := stripTarget{path: "/latest/meta-data", query: url.Values{}, keep: func(p string) bool { return !strings.Contains(p, "/iam") }}
	tests := []struct {
		name     string
		status   int
		header   http.Header
		want     int // 0: refused
		body     string
		location string
	}{
		{"a 200 is stripped", 200, nil, 200, "a\nb", ""},
		{"a 206 is refused", 206, nil, 0, "", ""},
		{"a 304 is refused: the proxy never sent a validator", 304, nil, 0, "", ""},
		{"another 2xx is refused", 203, nil, 0, "", ""},
		{"a redirect to the listing's directory is kept", 301, http.Header{"Location": {"http://169.254.169.254/latest/meta-data/"}}, 301, "", "/latest/meta-data/"},
		{"a redirect elsewhere is refused", 302, http.Header{"Location": {"/latest/meta-data/iam/"}}, 0, "", ""},
		{"a 401 keeps its status, so the SDK refreshes its token", 401, http.Header{"Www-Authenticate": {"iam"}}, 401, "metaguard: the metadata service answered 401 Unauthorized\n", ""},
		{"a 503 gets the proxy's own Retry-After", 503, http.Header{"Retry-After": {"2"}}, 503, "metaguard: the metadata service answered 503 Service Unavailable\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := tt.header
			if h == nil {
				h = http.Header{}
			}
			a, err := stripAnswer(tgt, tt.status, h, []byte("a\niam/\nb"))
			if tt.want == 0 {
				if err == nil {
					t.Fatalf("answered %d, want a refusal", a.status)
				}
				return
			}
			if err != nil || a.status != tt.want || string(a.body) != tt.body || a.header.Get("Location") != tt.location {
				t.Fatalf("got %d %q Location %q (%v), want %d %q %q", a.status, a.body, a.header.Get("Location"), err, tt.want, tt.body, tt.location)
			}
			if tt.status == 503 && a.header.Get("Retry-After") != "1" {
				t.Errorf("Retry-After %q, want the proxy's 1", a.header.Get("Retry-After"))
			}
			if a.header.Get("Www-Authenticate") != "" {
				t.Error("an upstream header was relayed")
			}
		})
	}
}

// TestALongPollOnAStrippedListingWaitsForAVisibleChange: the upstream's
// wait_for_change ends on every change, hidden ones included; the pod must
// only learn of the changes it can see.
func TestALongPollOnAStrippedListingWaitsForAVisibleChange(t *testing.T) {
	versions := [][]string{
		{"hostname", "token"},
		{"hostname", "token", "identity"}, // hidden change
		{"hostname", "token", "identity", "zone"},
	}
	var mu sync.Mutex
	served := 0
	h := newHarness(t, "gcp", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		q := r.URL.Query()
		if q.Get("wait_for_change") == "true" && served < len(versions)-1 {
			served++
		}
		body := strings.Join(versions[served], "\n") + "\n"
		w.Header().Set("Etag", fmt.Sprintf("up-%d", served))
		io.WriteString(w, body)
	})
	const target = "/computeMetadata/v1/instance/service-accounts/default/"
	google := http.Header{"Metadata-Flavor": {"Google"}}
	resp, body := h.do(plainPod, "GET", target, google)
	if body != "hostname\n" {
		t.Fatalf("first body %q", body)
	}
	resp, body = h.do(plainPod, "GET", target+"?wait_for_change=true&timeout_sec=5&last_etag="+resp.Header.Get("Etag"), google)
	if resp.StatusCode != 200 || body != "hostname\nzone\n" {
		t.Fatalf("status %d body %q, want the first visible change (zone), not the hidden one", resp.StatusCode, body)
	}
	for _, r := range h.up.received() {
		if r.URL.Query().Get("last_etag") != "" && !strings.HasPrefix(r.URL.Query().Get("last_etag"), "up-") {
			t.Errorf("the pod's ETag reached the upstream: %s", r.URL.RawQuery)
		}
	}
}

// FuzzStripAnswerDependsOnlyOnVisibleEntries holds the stripper to the
// property a strip decision promises: for any upstream answer, in any
// listing shape and any status, the pod's answer names no hidden entry and
// is byte for byte the same whatever the hidden entries are (so neither
// its length nor its validators can tell them).
func FuzzStripAnswerDependsOnlyOnVisibleEntries(f *testing.F) {
	f.Add(uint8(0), 200, "hostname,zone", "a,b", "", false, true)
	f.Add(uint8(1), 200, "attributes,id", "kube-env", "application/json", true, false)
	f.Add(uint8(2), 200, "hostname,id", "token,identity", "application/json", false, true)
	f.Add(uint8(3), 200, "id,zone", "x", "application/text", false, false)
	f.Add(uint8(4), 206, "a", "b", "text/plain", true, true)
	f.Add(uint8(0), 401, "a", "b", "", false, false)
	f.Add(uint8(1), 200, "{,[", "}", "", false, true)
	f.Fuzz(func(t *testing.T, shape uint8, status int, visible, hiddenSeed, contentType string, recursive, trailing bool) {
		const marker = "zzh"
		keep := func(p string) bool { return !strings.Contains(p, marker) }
		var vis []string
		for _, v := range strings.Split(visible, ",") {
			if !strings.Contains(v, marker) && !strings.ContainsAny(v, "\n\r") {
				vis = append(vis, v)
			}
		}
		q := url.Values{}
		if recursive {
			q.Set("recursive", "true")
		}
		if shape%5 == 3 {
			q.Set("alt", "text")
		}
		tgt := stripTarget{path: "/dir/", query: q, keep: keep}
		variant := func(n int) (answer, error) {
			var hidden []string
			for i := range n {
				hidden = append(hidden, fmt.Sprintf("%s%d-%s", marker, i, strings.Map(func(r rune) rune {
					if r == '\n' || r == '\r' || r == ',' {
						return -1
					}
					return r
				}, hiddenSeed)))
			}
			// Hidden entries go first, last and between: wherever the
			// upstream puts them.
			var names []string
			names = append(names, hidden[:n/2]...)
			for i, v := range vis {
				names = append(names, v)
				if i == 0 && n > 0 {
					names = append(names, hidden[n-1])
				}
			}
			names = append(names, hidden[n/2:max(n-1, n/2)]...)
			body := renderShape(shape, names, marker)
			if trailing {
				body += "\n"
			}
			sum := md5.Sum([]byte(body))
			h := http.Header{
				"Etag":           {fmt.Sprintf("%x", sum)},
				"Content-Md5":    {base64.StdEncoding.EncodeToString(sum[:])},
				"Content-Length": {strconv.Itoa(len(body))},
				"X-Hidden":       {strings.Join(hidden, ",")},
				"Location":       {"/dir/" + strings.Join(hidden, "/")},
				"Retry-After":    {strconv.Itoa(len(hidden))},
			}
			if contentType != "" {
				h.Set("Content-Type", contentType)
			}
			return stripAnswer(tgt, status, h, []byte(body))
		}
		a1, err1 := variant(2)
		a2, err2 := variant(5)
		if (err1 == nil) != (err2 == nil) {
			t.Fatalf("one variant refused, the other not: %v / %v", err1, err2)
		}
		if err1 != nil {
			return
		}
		if a1.status != a2.status || !reflect.DeepEqual(a1.header, a2.header) || string(a1.body) != string(a2.body) {
			t.Fatalf("the answer depends on the hidden entries:\n%d %v %q\n%d %v %q", a1.status, a1.header, a1.body, a2.status, a2.header, a2.body)
		}
		all := fmt.Sprint(a1.header) + string(a1.body)
		if strings.Contains(all, marker) {
			t.Fatalf("a hidden entry reached the pod: %v %q", a1.header, a1.body)
		}
	})
}

// renderShape lays entries out the ways listing answers come: newline
// list, JSON object, JSON array, alt=text lines, nested recursive JSON.
// Hidden entries' values carry the marker too.
func renderShape(shape uint8, names []string, marker string) string {
	value := func(n string) string {
		if strings.Contains(n, marker) {
			return "secret-" + n
		}
		return "v"
	}
	switch shape % 5 {
	case 1:
		m := map[string]string{}
		for _, n := range names {
			m[n] = value(n)
		}
		b, _ := json.Marshal(m)
		return string(b)
	case 2:
		b, _ := json.Marshal(names)
		return string(b)
	case 3:
		var lines []string
		for _, n := range names {
			lines = append(lines, n+" "+value(n))
		}
		return strings.Join(lines, "\n")
	case 4:
		m := map[string]any{}
		for _, n := range names {
			m[n] = map[string]any{"inner": value(n), "list": []string{value(n)}}
		}
		b, _ := json.Marshal(map[string]any{"top": m})
		return string(b)
	}
	return strings.Join(names, "\n")
}
