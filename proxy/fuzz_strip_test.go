package proxy

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// hiddenForFuzz hides GCP's credential entries the way a strip decision
// does: kube-env and every service account's token and identity.
func hiddenForFuzz(p string) bool {
	return !strings.HasSuffix(p, "/kube-env") && !strings.HasSuffix(p, "/token") && !strings.HasSuffix(p, "/identity")
}

// FuzzStripTextNeverLeaksAHiddenEntry: GCP's alt=text output, stripped,
// keeps only lines whose key the pod may read, keeps them in order and
// unchanged, and a recursive dump that held a hidden entry is refused
// whole (a value spanning lines cannot be cut out safely).
func FuzzStripTextNeverLeaksAHiddenEntry(f *testing.F) {
	f.Add([]byte("attributes/cluster-name e2e\nattributes/kube-env KUBELET_KEY: x\n  more secret\nhostname node-a\n"), true)
	f.Add([]byte("cluster-name e2e\nkube-env KUBELET_KEY\n"), false)
	f.Add([]byte("service-accounts/default/token {\"access_token\":\"x\"}\nzone z\n"), true)
	f.Add([]byte("kube-env\r\n kube-env x\n\n"), false)
	f.Fuzz(func(t *testing.T, body []byte, recursive bool) {
		const dir = "/computeMetadata/v1/instance/attributes/"
		out, removed, err := StripText(body, dir, recursive, hiddenForFuzz)
		if err != nil {
			if !recursive || removed == 0 {
				t.Fatalf("StripText(%q, recursive=%v) failed with %d removed: %v", body, recursive, removed, err)
			}
			return
		}
		if recursive && removed > 0 {
			t.Fatalf("a recursive dump with %d hidden entries was relayed: %q", removed, out)
		}
		in := strings.Split(string(body), "\n")
		i := 0
		for _, line := range strings.Split(strings.TrimSuffix(string(out), "\n"), "\n") {
			if len(out) == 0 {
				break
			}
			key, _, _ := strings.Cut(strings.TrimSpace(line), " ")
			if key != "" && !hiddenForFuzz(dir+key) {
				t.Fatalf("StripText(%q) kept hidden line %q", body, line)
			}
			for i < len(in) && in[i] != line {
				i++
			}
			if i == len(in) {
				t.Fatalf("StripText(%q) produced %q, which is not an input line in order", body, line)
			}
			i++
		}
	})
}

// FuzzStripJSONIsValidAndIdempotent: a stripped JSON dump is valid JSON
// with no hidden key at any depth, in either spelling, and stripping it
// again removes nothing.
func FuzzStripJSONIsValidAndIdempotent(f *testing.F) {
	f.Add([]byte(`{"attributes":{"kube-env":"x","kubeEnv":"y","a":"b"},"serviceAccounts":{"default":{"token":"t","identity":"i","email":"e"}}}`))
	f.Add([]byte(`{"id":4520031799277581759,"n":1e400,"s":"\u003c"}`))
	f.Add([]byte(`[{"token":1},{"a":[{"token":2}]}]`))
	f.Add([]byte(`{"a":1}{"b":2}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		const dir = "/computeMetadata/v1/instance/"
		out, _, err := StripJSON(body, dir, hiddenForFuzz)
		if err != nil {
			return // answered 502, nothing relayed
		}
		var v any
		dec := json.NewDecoder(bytes.NewReader(out))
		dec.UseNumber()
		if err := dec.Decode(&v); err != nil || dec.More() {
			t.Fatalf("StripJSON(%q) produced invalid JSON %q: %v", body, out, err)
		}
		if k := hiddenKey(v, dir); k != "" {
			t.Fatalf("StripJSON(%q) kept hidden key %s: %q", body, k, out)
		}
		again, removed, err := StripJSON(out, dir, hiddenForFuzz)
		if err != nil || removed != 0 || !bytes.Equal(again, out) {
			t.Fatalf("stripping %q again removed %d (%v): %q", out, removed, err, again)
		}
	})
}

// hiddenKey walks v as StripJSON does and returns the path of a key the
// pod may not see, or "".
func hiddenKey(v any, base string) string {
	switch t := v.(type) {
	case map[string]any:
		for k, child := range t {
			kebab := kebabCase(k)
			for _, p := range []string{base + k, base + kebab, base + k + "/", base + kebab + "/"} {
				if !hiddenForFuzz(p) {
					return p
				}
			}
			if h := hiddenKey(child, base+kebab+"/"); h != "" {
				return h
			}
		}
	case []any:
		for i, child := range t {
			if h := hiddenKey(child, base+itoa(i)+"/"); h != "" {
				return h
			}
		}
	}
	return ""
}
