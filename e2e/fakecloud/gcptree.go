package fakecloud

import (
	"bytes"
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
