package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strconv"
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
// that keepLine accepts, and the body's trailing-newline convention. The
// output is built in one buffer no larger than the body.
func filterLines(body []byte, keepLine func(string) bool) ([]byte, int) {
	trailing := bytes.HasSuffix(body, []byte("\n"))
	rest := bytes.TrimSuffix(body, []byte("\n"))
	out := make([]byte, 0, len(body))
	removed, kept := 0, 0
	for {
		line, tail, more := bytes.Cut(rest, []byte("\n"))
		if keepLine(string(bytes.TrimSpace(line))) {
			if kept > 0 {
				out = append(out, '\n')
			}
			out = append(out, line...)
			kept++
		} else {
			removed++
		}
		if !more {
			break
		}
		rest = tail
	}
	if trailing && kept > 0 {
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
//
// It streams the document token by token into one output buffer no larger
// than the body, never building the document in memory: a decoded tree
// costs several times the text, and the body is the upstream's to choose.
func StripJSON(body []byte, dir string, keep func(string) bool) ([]byte, int, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	s := &jsonStripper{dec: dec, keep: keep, out: make([]byte, 0, len(body))}
	tok, err := dec.Token()
	if err != nil {
		return nil, 0, errUnstrippable
	}
	if err := s.value(tok, entryBase(dir), true, 0); err != nil {
		return nil, 0, errUnstrippable
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, 0, errUnstrippable // a second document, or garbage
	}
	if bytes.HasSuffix(body, []byte("\n")) {
		s.out = append(s.out, '\n')
	}
	return s.out, s.removed, nil
}

// maxJSONDepth bounds nesting: metadata documents are a few levels deep,
// and each level is a frame of the stripper's recursion.
const maxJSONDepth = 64

var errJSONShape = errors.New("JSON document too deep or malformed")

type jsonStripper struct {
	dec     *json.Decoder
	keep    func(string) bool
	out     []byte
	removed int
	str     bytes.Buffer // scratch for encoding strings
	enc     *json.Encoder
}

// value writes the value that starts with tok. top is set for the
// document's own value: there an array is a listing, and its strings must
// be plain entry names; deeper, arrays hold values (GCP scopes are URLs)
// and a string is removed only when it names a hidden entry.
func (s *jsonStripper) value(tok json.Token, base string, top bool, depth int) error {
	if depth > maxJSONDepth {
		return errJSONShape
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			return s.object(base, depth)
		case '[':
			return s.array(base, top, depth)
		}
		return errJSONShape
	case string:
		s.appendString(t)
	case json.Number:
		s.out = append(s.out, t...)
	case bool:
		s.out = strconv.AppendBool(s.out, t)
	case nil:
		s.out = append(s.out, "null"...)
	default:
		return errJSONShape
	}
	return nil
}

func (s *jsonStripper) object(base string, depth int) error {
	s.out = append(s.out, '{')
	first := true
	for s.dec.More() {
		tok, err := s.dec.Token()
		if err != nil {
			return err
		}
		key, ok := tok.(string)
		if !ok {
			return errJSONShape
		}
		kebab := kebabCase(key)
		val, err := s.dec.Token()
		if err != nil {
			return err
		}
		if !visibleEntry(base, key, s.keep) || !visibleEntry(base, kebab, s.keep) {
			s.removed++
			if err := s.skip(val, depth); err != nil {
				return err
			}
			continue
		}
		if !first {
			s.out = append(s.out, ',')
		}
		first = false
		s.appendString(key)
		s.out = append(s.out, ':')
		if err := s.value(val, base+kebab+"/", false, depth+1); err != nil {
			return err
		}
	}
	if _, err := s.dec.Token(); err != nil { // '}'
		return err
	}
	s.out = append(s.out, '}')
	return nil
}

func (s *jsonStripper) array(base string, top bool, depth int) error {
	s.out = append(s.out, '[')
	first := true
	for i := 0; s.dec.More(); i++ {
		tok, err := s.dec.Token()
		if err != nil {
			return err
		}
		if str, ok := tok.(string); ok && !visibleValue(base, str, s.keep, top) {
			s.removed++
			continue
		}
		if !first {
			s.out = append(s.out, ',')
		}
		first = false
		if err := s.value(tok, base+itoa(i)+"/", false, depth+1); err != nil {
			return err
		}
	}
	if _, err := s.dec.Token(); err != nil { // ']'
		return err
	}
	s.out = append(s.out, ']')
	return nil
}

// skip consumes the rest of the value that starts with tok.
func (s *jsonStripper) skip(tok json.Token, depth int) error {
	d, ok := tok.(json.Delim)
	if !ok {
		return nil
	}
	if d != '{' && d != '[' {
		return errJSONShape
	}
	open := 1
	for open > 0 {
		tok, err := s.dec.Token()
		if err != nil {
			return err
		}
		if d, ok := tok.(json.Delim); ok {
			switch d {
			case '{', '[':
				open++
				if depth+open > maxJSONDepth {
					return errJSONShape
				}
			default:
				open--
			}
		}
	}
	return nil
}

// appendString writes s as a JSON string, as encoding/json writes it but
// without escaping HTML, which metadata values are not.
func (s *jsonStripper) appendString(v string) {
	if s.enc == nil {
		s.enc = json.NewEncoder(&s.str)
		s.enc.SetEscapeHTML(false)
	}
	s.str.Reset()
	_ = s.enc.Encode(v) // a string always encodes
	s.out = append(s.out, bytes.TrimSuffix(s.str.Bytes(), []byte("\n"))...)
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
