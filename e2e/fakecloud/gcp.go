package fakecloud

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	gcpPrefix     = "/computeMetadata/v1"
	gcpSAEmail    = "123456789012-compute@developer.gserviceaccount.com"
	gcpMaxTimeout = time.Hour
)

// gcpNode is a directory (children != nil) or a leaf of the metadata tree.
type gcpNode struct {
	children map[string]*gcpNode
	// verbatim marks directories whose child names are data (attribute
	// keys, service account emails): GCE camelCases the schema's own
	// kebab-case names in recursive JSON, never these.
	verbatim bool
	// value is a string, an int64 or a []string.
	value any
	// dynamic leaves (token, identity) are minted per request and, as on
	// GCE, left out of recursive dumps.
	dynamic func(q url.Values) (body string, status int)
}

func dir(verbatim bool, kids map[string]*gcpNode) *gcpNode {
	return &gcpNode{children: kids, verbatim: verbatim}
}

func leaf(v any) *gcpNode { return &gcpNode{value: v} }

// gcpTree is the instance's metadata. Values change only through set,
// which wakes every wait_for_change long-poll.
type gcpTree struct {
	mu      sync.Mutex
	root    *gcpNode
	changed chan struct{}
	// tokens is only touched by token, which runs under mu.
	tokens int
}

func newGCPTree() *gcpTree {
	t := &gcpTree{changed: make(chan struct{})}
	account := func(email string) *gcpNode {
		return dir(false, map[string]*gcpNode{
			"aliases":  leaf([]string{"default"}),
			"email":    leaf(email),
			"scopes":   leaf([]string{"https://www.googleapis.com/auth/cloud-platform"}),
			"token":    {dynamic: t.token},
			"identity": {dynamic: identity(email)},
		})
	}
	t.root = dir(false, map[string]*gcpNode{
		"instance": dir(false, map[string]*gcpNode{
			"attributes": dir(true, map[string]*gcpNode{
				"cluster-name":     leaf("e2e"),
				"cluster-location": leaf("us-central1-a"),
				// Multi-line, as GKE's kube-env is: a proxy that strips
				// alt=text output must not assume one line per value.
				"kube-env": leaf("CLUSTER_NAME: e2e\nKUBELET_CERT: ZmFrZS1rdWJlbGV0LWNlcnQ=\nKUBELET_KEY: ZmFrZS1rdWJlbGV0LWtleQ==\n"),
			}),
			"hostname": leaf("node-a.c.metaguard-e2e.internal"),
			// Larger than 2^53 on purpose, as real instance ids are: a JSON
			// rewrite through float64 would change it.
			"id":           leaf(int64(4520031799277581759)),
			"machine-type": leaf("projects/123456789012/machineTypes/e2-standard-2"),
			"name":         leaf("node-a"),
			"service-accounts": dir(true, map[string]*gcpNode{
				"default":  account(gcpSAEmail),
				gcpSAEmail: account(gcpSAEmail),
			}),
			"zone": leaf("projects/123456789012/zones/us-central1-a"),
		}),
		"project": dir(false, map[string]*gcpNode{
			"attributes": dir(true, map[string]*gcpNode{
				"ssh-keys": leaf("alice:ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeFakeFakeFakeFakeFakeFakeFakeFakeFake alice\n"),
			}),
			"numeric-project-id": leaf(int64(123456789012)),
			"project-id":         leaf("metaguard-e2e"),
		}),
	})
	return t
}

// token mints a distinct access token per request; it runs from render,
// under t.mu.
func (t *gcpTree) token(url.Values) (string, int) {
	t.tokens++
	return fmt.Sprintf(`{"access_token":"ya29.e2e-fake-token-%d","expires_in":3599,"token_type":"Bearer"}`, t.tokens), http.StatusOK
}

func identity(email string) func(url.Values) (string, int) {
	return func(q url.Values) (string, int) {
		aud := q.Get("audience")
		if aud == "" {
			return "non-empty audience parameter required\n", http.StatusBadRequest
		}
		enc := base64.RawURLEncoding
		claims, _ := json.Marshal(map[string]any{
			"aud": aud, "azp": email, "email": email, "exp": time.Now().Add(time.Hour).Unix(),
			"iat": time.Now().Unix(), "iss": "https://accounts.google.com", "sub": "123456789012345678901",
		})
		return enc.EncodeToString([]byte(`{"alg":"RS256","typ":"JWT"}`)) + "." +
			enc.EncodeToString(claims) + "." + enc.EncodeToString([]byte("e2e-fake-signature")), http.StatusOK
	}
}

// lookup walks rel ("instance/attributes/") under the root.
func (t *gcpTree) lookup(rel string) *gcpNode {
	n := t.root
	for _, seg := range strings.Split(strings.Trim(rel, "/"), "/") {
		if seg == "" {
			continue
		}
		if n.children == nil {
			return nil
		}
		if n = n.children[seg]; n == nil {
			return nil
		}
	}
	return n
}

func (t *gcpTree) set(path, value string) error {
	rel, ok := strings.CutPrefix(path, gcpPrefix+"/")
	if !ok {
		return fmt.Errorf("path %q is not under %s/", path, gcpPrefix)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.lookup(rel)
	if n == nil || n.children != nil || n.dynamic != nil {
		return fmt.Errorf("path %q is not a settable leaf", path)
	}
	n.value = value
	close(t.changed)
	t.changed = make(chan struct{})
	return nil
}

// serveGCP imitates GCE's metadata server: Metadata-Flavor is required on
// the v1 API and echoed on every answer (Google client libraries probe
// GET / for it), directories without a trailing slash redirect, and
// responses carry an ETag that wait_for_change compares.
func (s *Server) serveGCP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Metadata-Flavor", "Google")
	if forwarded(r) {
		http.Error(w, "Request denied: X-Forwarded-For header present", http.StatusBadRequest)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		http.Error(w, "Method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if r.URL.Path == "/" {
		w.Header().Set("Content-Type", "application/text")
		_, _ = io.WriteString(w, "computeMetadata/\n")
		return
	}
	if !strings.HasPrefix(r.URL.Path, "/computeMetadata/") && r.URL.Path != "/computeMetadata" {
		http.NotFound(w, r)
		return
	}
	if r.Header.Get("Metadata-Flavor") != "Google" {
		http.Error(w, "Your client does not have permission to get URL "+r.URL.Path+
			" from this server. Missing Metadata-Flavor:Google header.", http.StatusForbidden)
		return
	}
	switch r.URL.Path {
	case "/computeMetadata", gcpPrefix:
		http.Redirect(w, r, r.URL.Path+"/", http.StatusMovedPermanently)
		return
	case "/computeMetadata/":
		w.Header().Set("Content-Type", "application/text")
		_, _ = io.WriteString(w, "v1/\n")
		return
	}
	rel, ok := strings.CutPrefix(r.URL.Path, gcpPrefix+"/")
	if !ok {
		http.NotFound(w, r)
		return
	}
	s.gcp.serve(w, r, rel)
}

func (t *gcpTree) serve(w http.ResponseWriter, r *http.Request, rel string) {
	q := r.URL.Query()
	wait := q.Get("wait_for_change") == "true"
	lastETag := q.Get("last_etag")
	timeout := gcpMaxTimeout
	if v := q.Get("timeout_sec"); v != "" {
		sec, err := strconv.Atoi(v)
		if err != nil || sec <= 0 {
			http.Error(w, "invalid timeout_sec", http.StatusBadRequest)
			return
		}
		timeout = min(time.Duration(sec)*time.Second, gcpMaxTimeout)
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		t.mu.Lock()
		body, ctype, status, redirect := t.render(rel, q)
		changed := t.changed
		t.mu.Unlock()
		if redirect {
			http.Redirect(w, r, r.URL.Path+"/", http.StatusMovedPermanently)
			return
		}
		etag := etagOf(body)
		if !wait || status != http.StatusOK || (lastETag != "" && lastETag != etag) {
			writeGCP(w, body, ctype, status, etag)
			return
		}
		if lastETag == "" {
			lastETag = etag
		}
		select {
		case <-changed:
		case <-deadline.C:
			writeGCP(w, body, ctype, status, etag)
			return
		case <-r.Context().Done():
			return
		}
	}
}

func writeGCP(w http.ResponseWriter, body []byte, ctype string, status int, etag string) {
	w.Header().Set("Content-Type", ctype)
	if status == http.StatusOK {
		w.Header().Set("ETag", etag)
	}
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func etagOf(body []byte) string {
	sum := sha256.Sum256(body)
	return hex.EncodeToString(sum[:8])
}

// render answers one request from the tree; the caller holds t.mu.
func (t *gcpTree) render(rel string, q url.Values) (body []byte, ctype string, status int, redirect bool) {
	n := t.lookup(rel)
	isDirRequest := rel == "" || strings.HasSuffix(rel, "/")
	alt := q.Get("alt")
	switch {
	case n == nil:
		return []byte("Not Found\n"), "text/html", http.StatusNotFound, false
	case n.children == nil && isDirRequest:
		return []byte("Not Found\n"), "text/html", http.StatusNotFound, false
	case n.children != nil && q.Get("recursive") == "true":
		if alt == "text" {
			var buf bytes.Buffer
			textDump(&buf, "", n)
			return buf.Bytes(), "application/text", http.StatusOK, false
		}
		b, _ := json.Marshal(jsonDump(n))
		return b, "application/json", http.StatusOK, false
	case n.children != nil && !isDirRequest:
		return nil, "", 0, true
	case n.children != nil:
		names := make([]string, 0, len(n.children))
		for _, k := range sortedKeys(n.children) {
			if n.children[k].children != nil {
				k += "/"
			}
			names = append(names, k)
		}
		if alt == "json" {
			b, _ := json.Marshal(names)
			return b, "application/json", http.StatusOK, false
		}
		return []byte(strings.Join(names, "\n") + "\n"), "application/text", http.StatusOK, false
	case n.dynamic != nil:
		b, code := n.dynamic(q)
		ctype := "application/text"
		if strings.HasPrefix(b, "{") {
			ctype = "application/json"
		}
		return []byte(b), ctype, code, false
	case alt == "json":
		b, _ := json.Marshal(n.value)
		return b, "application/json", http.StatusOK, false
	default:
		return []byte(leafText(n.value)), "application/text", http.StatusOK, false
	}
}

func leafText(v any) string {
	switch v := v.(type) {
	case []string:
		return strings.Join(v, "\n") + "\n"
	case int64:
		return strconv.FormatInt(v, 10)
	default:
		return fmt.Sprint(v)
	}
}

// jsonDump is a directory as GCE's recursive=true JSON: schema names in
// camelCase, data names verbatim, dynamic leaves absent.
func jsonDump(n *gcpNode) map[string]any {
	out := make(map[string]any, len(n.children))
	for k, c := range n.children {
		if c.dynamic != nil {
			continue
		}
		key := k
		if !n.verbatim {
			key = camelCase(k)
		}
		if c.children != nil {
			out[key] = jsonDump(c)
		} else {
			out[key] = c.value
		}
	}
	return out
}

// textDump writes alt=text: "key value" per leaf, keys relative to the
// requested directory and spelled as in paths; a list gives one line per
// element.
func textDump(buf *bytes.Buffer, prefix string, n *gcpNode) {
	for _, k := range sortedKeys(n.children) {
		c := n.children[k]
		switch {
		case c.dynamic != nil:
		case c.children != nil:
			textDump(buf, prefix+k+"/", c)
		default:
			vals, ok := c.value.([]string)
			if !ok {
				vals = []string{leafText(c.value)}
			}
			for _, v := range vals {
				fmt.Fprintf(buf, "%s%s %s\n", prefix, k, strings.TrimSuffix(v, "\n"))
			}
		}
	}
}

func camelCase(s string) string {
	parts := strings.Split(s, "-")
	for i := 1; i < len(parts); i++ {
		if parts[i] != "" {
			parts[i] = strings.ToUpper(parts[i][:1]) + parts[i][1:]
		}
	}
	return strings.Join(parts, "")
}

func sortedKeys(m map[string]*gcpNode) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
