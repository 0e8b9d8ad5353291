package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
)

// The strippers remove credential entries from responses that list or
// dump a directory, so a workload cannot even learn that a credential
// exists. keep is called with the full path of every entry and says
// whether the pod may see it; dir is the canonical request path.
//
// They fail closed: a body they cannot parse is an error, and the caller
// answers 502 rather than relaying something unexamined.

// errUnstrippable means a response could not be examined safely.
var errUnstrippable = errors.New("response cannot be stripped safely")

// entryBase returns the directory that listing entries are relative to:
// "/latest/meta-data" and "/latest/meta-data/" both list its children.
func entryBase(dir string) string {
	if strings.HasSuffix(dir, "/") {
		return dir
	}
	return dir + "/"
}

// StripListing filters a newline-separated directory listing (AWS IMDS,
// GCP without recursive): each line names one child, with a trailing "/"
// for a subdirectory ("iam/", "security-credentials/", "token"). A line
// that is not a plain relative name is removed too.
func StripListing(body []byte, dir string, keep func(string) bool) ([]byte, int) {
	base := entryBase(dir)
	return filterLines(body, func(line string) bool { return visibleEntry(base, line, keep) })
}

// StripText filters GCP's alt=text output: one "key value" line per entry,
// keys relative to dir. A value that spans lines cannot be told apart from
// the next key, so when a recursive dump held a credential entry the whole
// response is refused (errUnstrippable) instead of guessing where the
// secret ends.
func StripText(body []byte, dir string, recursive bool, keep func(string) bool) ([]byte, int, error) {
	base := entryBase(dir)
	out, removed := filterLines(body, func(line string) bool {
		key, _, _ := strings.Cut(line, " ")
		return visibleEntry(base, key, keep)
	})
	if recursive && removed > 0 {
		return nil, removed, errUnstrippable
	}
	return out, removed, nil
}

// filterLines keeps the lines (trimmed of surrounding space for the test)
// that keepLine accepts, and the body's trailing-newline convention.
func filterLines(body []byte, keepLine func(string) bool) ([]byte, int) {
	nl := []byte("\n")
	trailing := bytes.HasSuffix(body, nl)
	lines := bytes.Split(bytes.TrimSuffix(body, nl), nl)
	kept := lines[:0]
	removed := 0
	for _, l := range lines {
		if !keepLine(strings.TrimSpace(string(l))) {
			removed++
			continue
		}
		kept = append(kept, l)
	}
	out := bytes.Join(kept, nl)
	if trailing && len(kept) > 0 {
		out = append(out, '\n')
	}
	return out, removed
}

// StripJSON filters a JSON dump of a directory (GCP recursive=true, Azure)
// or a JSON listing (GCP alt=json on a directory: an array of entry
// names). Object keys are path segments; GCP writes them in camelCase
// ("serviceAccounts") where the path has kebab-case ("service-accounts"),
// so an entry is removed when either spelling is hidden. A string in an
// array may be an entry name and is removed when it names a hidden entry;
// other array elements are numbered segments.
func StripJSON(body []byte, dir string, keep func(string) bool) ([]byte, int, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, 0, errUnstrippable
	}
	if dec.More() {
		return nil, 0, errUnstrippable
	}
	v, removed := stripValue(v, entryBase(dir), keep, true)
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, 0, errUnstrippable
	}
	b := out.Bytes()
	if !bytes.HasSuffix(body, []byte("\n")) {
		b = bytes.TrimSuffix(b, []byte("\n"))
	}
	return b, removed, nil
}

// stripValue returns v without the hidden entries below base, and how many
// it removed. top is set for the document's own value: there an array is a
// listing, and its strings must be plain entry names; deeper, arrays hold
// values (GCP scopes are URLs) and a string is removed only when it names
// a hidden entry.
func stripValue(v any, base string, keep func(string) bool, top bool) (any, int) {
	removed := 0
	switch t := v.(type) {
	case map[string]any:
		for k, child := range t {
			kebab := kebabCase(k)
			if !visibleEntry(base, k, keep) || !visibleEntry(base, kebab, keep) {
				delete(t, k)
				removed++
				continue
			}
			nv, n := stripValue(child, base+kebab+"/", keep, false)
			t[k] = nv
			removed += n
		}
		return t, removed
	case []any:
		kept := make([]any, 0, len(t))
		for i, child := range t {
			if s, ok := child.(string); ok && !visibleValue(base, s, keep, top) {
				removed++
				continue
			}
			nv, n := stripValue(child, base+itoa(i)+"/", keep, false)
			kept = append(kept, nv)
			removed += n
		}
		return kept, removed
	}
	return v, 0
}

func visibleValue(base, s string, keep func(string) bool, top bool) bool {
	if top {
		return visibleEntry(base, s, keep) && visibleEntry(base, kebabCase(s), keep)
	}
	dir := strings.TrimSuffix(s, "/")
	return keep(base+s) && keep(base+dir) && keep(base+dir+"/") && keep(base+kebabCase(dir))
}

// kebabCase turns GCP's JSON key spelling into its path spelling:
// "serviceAccounts" -> "service-accounts".
func kebabCase(s string) string {
	if strings.ToLower(s) == s {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'A' && c <= 'Z' {
			if i > 0 {
				b.WriteByte('-')
			}
			c += 'a' - 'A'
		}
		b.WriteByte(c)
	}
	return b.String()
}

func itoa(i int) string {
	if i < 10 {
		return string(rune('0' + i))
	}
	return itoa(i/10) + string(rune('0'+i%10))
}
