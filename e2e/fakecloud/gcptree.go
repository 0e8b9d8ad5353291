package fakecloud

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
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
	// gcpGuestAttributeMax bounds a guest attribute value. GCE documents
	// small limits for guest attributes (manage-guest-attributes); the fake
	// only needs some bound so a test cannot grow it without limit.
	gcpGuestAttributeMax = 100 << 10
)

// gcpNode is a directory (children != nil) or a leaf of the metadata tree.
type gcpNode struct {
	children map[string]*gcpNode
	// verbatim marks directories whose child names are data (attribute
	// keys, service account emails, guest attribute namespaces): GCE
	// camelCases the schema's own kebab-case names in recursive JSON,
	// never these.
	verbatim bool
	// array marks directories whose children are "0", "1", ...: GCE dumps
	// them as JSON arrays (networkInterfaces, accessConfigs), and lists
	// them as "0/".
	array bool
	// writable marks the guest-attributes tree, the only part of the API
	// that serves PUT and DELETE
	// (https://cloud.google.com/compute/docs/metadata/manage-guest-attributes).
	writable bool
	// value is a string, an int64, a []string (served as one line per
	// element, like scopes and aliases) or a jsonList (served as a JSON
	// array even without alt=json, like instance/tags, which
	// compute/metadata's InstanceTagsWithContext JSON-decodes).
	value any
	// dynamic leaves (token, identity) are minted per request and, as on
	// GCE, left out of recursive dumps.
	dynamic func(q url.Values) (body string, status int)
}

type jsonList []string

func dir(verbatim bool, kids map[string]*gcpNode) *gcpNode {
	return &gcpNode{children: kids, verbatim: verbatim}
}

func array(kids ...*gcpNode) *gcpNode {
	n := &gcpNode{children: map[string]*gcpNode{}, array: true}
	for i, k := range kids {
		n.children[strconv.Itoa(i)] = k
	}
	return n
}

func leaf(v any) *gcpNode { return &gcpNode{value: v} }

// gcpTree is the instance's metadata. Values change only through set,
// put and remove, which wake every wait_for_change long-poll.
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
	guest := dir(true, map[string]*gcpNode{
		// The guest agent publishes the SSH host keys here; clients that
		// trust them are why only a rule may grant a write.
		"hostkeys": dir(true, map[string]*gcpNode{
			"ssh-ed25519": leaf("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE2eFakeHostKeyFakeHostKeyFakeHostKey0000"),
		}),
	})
	guest.writable = true
	guest.children["hostkeys"].writable = true
	t.root = dir(false, map[string]*gcpNode{
		"instance": dir(false, map[string]*gcpNode{
			"attributes": dir(true, map[string]*gcpNode{
				"cluster-name":     leaf("e2e"),
				"cluster-location": leaf("us-central1-a"),
				// Multi-line, as GKE's kube-env is: a proxy that strips
				// alt=text output must not assume one line per value.
				"kube-env": leaf("CLUSTER_NAME: e2e\nKUBELET_CERT: ZmFrZS1rdWJlbGV0LWNlcnQ=\nKUBELET_KEY: ZmFrZS1rdWJlbGV0LWtleQ==\n"),
			}),
			"guest-attributes": guest,
			"hostname":         leaf("node-a.c.metaguard-e2e.internal"),
			// Larger than 2^53 on purpose, as real instance ids are: a JSON
			// rewrite through float64 would change it.
			"id":           leaf(int64(4520031799277581759)),
			"machine-type": leaf("projects/123456789012/machineTypes/e2-standard-2"),
			"name":         leaf("node-a"),
			"network-interfaces": array(dir(false, map[string]*gcpNode{
				"access-configs": array(dir(false, map[string]*gcpNode{
					"external-ip": leaf("203.0.113.10"),
					"type":        leaf("ONE_TO_ONE_NAT"),
				})),
				"ip":  leaf("172.31.0.1"),
				"mac": leaf("42:01:0a:80:00:02"),
			})),
			"service-accounts": dir(true, map[string]*gcpNode{
				"default":  account(gcpSAEmail),
				gcpSAEmail: account(gcpSAEmail),
			}),
			"tags": leaf(jsonList{"gke-e2e-node", "http-server"}),
			"zone": leaf("projects/123456789012/zones/us-central1-a"),
		}),
		"project": dir(false, map[string]*gcpNode{
			"attributes": dir(true, map[string]*gcpNode{
				"ssh-keys": leaf("alice:ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeFakeFakeFakeFakeFakeFakeFakeFakeFake alice\n"),
			}),
			"numeric-project-id": leaf(int64(123456789012)),
			"project-id":         leaf("metaguard-e2e"),
		}),
		// google-auth (Python) and cloud.google.com/go/auth read this;
		// golang.org/x/oauth2/google asks for "universe_domain" instead
		// and takes its 404 as googleapis.com.
		"universe": dir(false, map[string]*gcpNode{
			"universe-domain": leaf("googleapis.com"),
		}),
	})
	return t
}

// token mints a distinct access token per request; it runs from render,
// under t.mu. The document's fields are the ones the Go clients decode
// (golang.org/x/oauth2/google computeSource.Token, cloud.google.com/go/auth
// credentials/compute.go: access_token, expires_in, token_type).
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

func segments(rel string) []string {
	var out []string
	for _, seg := range strings.Split(strings.Trim(rel, "/"), "/") {
		if seg != "" {
			out = append(out, seg)
		}
	}
	return out
}

// lookup walks rel ("instance/attributes/") under the root.
func (t *gcpTree) lookup(rel string) *gcpNode {
	n := t.root
	for _, seg := range segments(rel) {
		if n.children == nil {
			return nil
		}
		if n = n.children[seg]; n == nil {
			return nil
		}
	}
	return n
}

// wake ends every long-poll; the caller holds t.mu.
func (t *gcpTree) wake() {
	close(t.changed)
	t.changed = make(chan struct{})
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
	t.wake()
	return nil
}

// guestKey splits "instance/guest-attributes/NS/KEY" into its namespace
// and key; ok is false for anything else (guest attributes are always
// namespace/key).
func guestKey(rel string) (ns, key string, ok bool) {
	segs := segments(rel)
	if len(segs) != 4 || segs[0] != "instance" || segs[1] != "guest-attributes" || strings.HasSuffix(rel, "/") {
		return "", "", false
	}
	return segs[2], segs[3], true
}

// put writes a guest attribute, as the guest agent does with PUT.
func (t *gcpTree) put(rel, value string) int {
	ns, key, ok := guestKey(rel)
	if !ok {
		return http.StatusBadRequest
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	guest := t.lookup("instance/guest-attributes")
	nsNode := guest.children[ns]
	if nsNode == nil {
		nsNode = dir(true, map[string]*gcpNode{})
		nsNode.writable = true
		guest.children[ns] = nsNode
	}
	nsNode.children[key] = leaf(value)
	t.wake()
	return http.StatusOK
}

// remove deletes a guest attribute (DELETE), and its namespace when it
// was the last key.
func (t *gcpTree) remove(rel string) int {
	ns, key, ok := guestKey(rel)
	if !ok {
		return http.StatusBadRequest
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	guest := t.lookup("instance/guest-attributes")
	nsNode := guest.children[ns]
	if nsNode == nil || nsNode.children[key] == nil {
		return http.StatusNotFound
	}
	delete(nsNode.children, key)
	if len(nsNode.children) == 0 {
		delete(guest.children, ns)
	}
	t.wake()
	return http.StatusOK
}

// rendered is one answer of the tree.
type rendered struct {
	body     []byte
	ctype    string
	status   int
	redirect bool
	isDir    bool
}

// render answers one GET from the tree; the caller holds t.mu.
func (t *gcpTree) render(rel string, q url.Values) rendered {
	n := t.lookup(rel)
	isDirRequest := rel == "" || strings.HasSuffix(rel, "/")
	alt := q.Get("alt")
	switch {
	case n == nil, n.children == nil && isDirRequest:
		return rendered{status: http.StatusNotFound}
	case n.children != nil && q.Get("recursive") == "true":
		if alt == "text" {
			var buf bytes.Buffer
			textDump(&buf, "", n)
			return rendered{body: buf.Bytes(), ctype: "application/text", status: http.StatusOK, isDir: true}
		}
		b, _ := json.Marshal(jsonDump(n))
		return rendered{body: b, ctype: "application/json", status: http.StatusOK, isDir: true}
	case n.children != nil && !isDirRequest:
		return rendered{redirect: true}
	case n.children != nil:
		names := make([]string, 0, len(n.children))
		for _, k := range sortedKeys(n) {
			if n.children[k].children != nil {
				k += "/"
			}
			names = append(names, k)
		}
		if alt == "json" {
			// A non-recursive directory with alt=json is a JSON array of
			// the entry names, slashes kept.
			b, _ := json.Marshal(names)
			return rendered{body: b, ctype: "application/json", status: http.StatusOK, isDir: true}
		}
		return rendered{body: []byte(strings.Join(names, "\n") + "\n"), ctype: "application/text", status: http.StatusOK, isDir: true}
	case n.dynamic != nil:
		b, code := n.dynamic(q)
		ctype := "application/text"
		if strings.HasPrefix(b, "{") {
			ctype = "application/json"
		}
		return rendered{body: []byte(b), ctype: ctype, status: code}
	case alt == "json":
		b, _ := json.Marshal(n.value)
		return rendered{body: b, ctype: "application/json", status: http.StatusOK}
	default:
		return rendered{body: []byte(leafText(n.value)), ctype: "application/text", status: http.StatusOK}
	}
}

func leafText(v any) string {
	switch v := v.(type) {
	case []string:
		return strings.Join(v, "\n") + "\n"
	case jsonList:
		b, _ := json.Marshal([]string(v))
		return string(b)
	case int64:
		return strconv.FormatInt(v, 10)
	default:
		return fmt.Sprint(v)
	}
}

// jsonDump is a directory as GCE's recursive=true JSON: schema names in
// camelCase, data names verbatim, numbered directories as arrays, dynamic
// leaves absent.
func jsonDump(n *gcpNode) any {
	if n.array {
		out := make([]any, 0, len(n.children))
		for i := 0; i < len(n.children); i++ {
			out = append(out, dumpValue(n.children[strconv.Itoa(i)]))
		}
		return out
	}
	out := make(map[string]any, len(n.children))
	for k, c := range n.children {
		if c.dynamic != nil {
			continue
		}
		key := k
		if !n.verbatim {
			key = camelCase(k)
		}
		out[key] = dumpValue(c)
	}
	return out
}

func dumpValue(c *gcpNode) any {
	if c.children != nil {
		return jsonDump(c)
	}
	if l, ok := c.value.(jsonList); ok {
		return []string(l)
	}
	return c.value
}

// textDump writes alt=text: "key value" per leaf, keys relative to the
// requested directory and spelled as in paths; a list gives one line per
// element.
func textDump(buf *bytes.Buffer, prefix string, n *gcpNode) {
	for _, k := range sortedKeys(n) {
		c := n.children[k]
		switch {
		case c.dynamic != nil:
		case c.children != nil:
			textDump(buf, prefix+k+"/", c)
		default:
			var vals []string
			switch v := c.value.(type) {
			case []string:
				vals = v
			case jsonList:
				vals = v
			default:
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

// sortedKeys lists a directory in order: numerically for arrays, else
// lexically.
func sortedKeys(n *gcpNode) []string {
	keys := make([]string, 0, len(n.children))
	for k := range n.children {
		keys = append(keys, k)
	}
	if n.array {
		slices.SortFunc(keys, func(a, b string) int {
			x, _ := strconv.Atoi(a)
			y, _ := strconv.Atoi(b)
			return x - y
		})
		return keys
	}
	slices.Sort(keys)
	return keys
}
