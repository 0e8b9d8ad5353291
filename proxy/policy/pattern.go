package policy

import (
	"fmt"
	"strings"
)

// pattern is a compiled path pattern: literal segments, "*" (exactly one
// non-empty segment) and "**" (any number of segments, also zero).
//
// Paths are compared segment by segment after splitting on "/", so a
// trailing slash becomes a final empty segment and stays significant:
// "/latest/meta-data/" lists a directory, "/latest/meta-data" does not
// match it.
type pattern struct {
	text string
	segs []string
}

const (
	segAny  = "*"
	segRest = "**"
)

// compilePattern checks that p is absolute and that wildcards are whole
// segments: "role-*" would silently mean something different from what an
// operator reading it expects, so it is refused.
func compilePattern(p string) (pattern, error) {
	if !strings.HasPrefix(p, "/") {
		return pattern{}, fmt.Errorf("path pattern %q must start with /", p)
	}
	segs := strings.Split(p[1:], "/")
	for i, s := range segs {
		switch {
		case s == segAny || s == segRest:
		case strings.Contains(s, "*"):
			return pattern{}, fmt.Errorf("path pattern %q: wildcards must be a whole segment (* or **)", p)
		case s == "" && i != len(segs)-1:
			return pattern{}, fmt.Errorf("path pattern %q: empty segment (//)", p)
		case s == "." || s == "..":
			return pattern{}, fmt.Errorf("path pattern %q: dot segments never match a canonical path", p)
		case !validPathBytes(s):
			return pattern{}, fmt.Errorf("path pattern %q: characters outside the canonical path alphabet never match", p)
		}
	}
	return pattern{text: p, segs: segs}, nil
}

// match reports whether the canonical path matches the pattern.
func (p pattern) match(path string) bool {
	return matchSegs(p.segs, path[1:])
}

// matchSegs matches pattern segments against the rest of a path without
// splitting it, so matching does not allocate.
func matchSegs(segs []string, rest string) bool {
	for i, s := range segs {
		if s == segRest {
			if i == len(segs)-1 {
				return true
			}
			// Try every split point; patterns are short, so backtracking
			// stays cheap.
			for {
				if matchSegs(segs[i+1:], rest) {
					return true
				}
				j := strings.IndexByte(rest, '/')
				if j < 0 {
					return false
				}
				rest = rest[j+1:]
			}
		}
		seg, tail, more := strings.Cut(rest, "/")
		switch s {
		case segAny:
			if seg == "" {
				return false
			}
		default:
			if seg != s {
				return false
			}
		}
		if i == len(segs)-1 {
			return !more
		}
		if !more {
			// The path ran out before the pattern did; only a final "**"
			// may match nothing.
			return len(segs) == i+2 && segs[i+1] == segRest
		}
		rest = tail
	}
	return false
}

// hasDescendant reports whether some path strictly below dir (a canonical
// path naming a directory, with or without its trailing slash) could match
// the pattern. It decides whether a listing of dir may name a credential
// path and so must be stripped.
func (p pattern) hasDescendant(dir string) bool {
	rest := strings.TrimSuffix(dir[1:], "/")
	segs := p.segs
	for rest != "" {
		if len(segs) == 0 {
			return false
		}
		seg, tail, _ := strings.Cut(rest, "/")
		switch segs[0] {
		case segRest:
			return true
		case segAny:
			if seg == "" {
				return false
			}
		default:
			if segs[0] != seg {
				return false
			}
		}
		segs, rest = segs[1:], tail
	}
	return len(segs) > 0
}

// validPathBytes reports whether s uses only the canonical path alphabet:
// characters that Go's URL encoder writes back unchanged, so the bytes
// matched are the bytes forwarded.
func validPathBytes(s string) bool {
	for i := 0; i < len(s); i++ {
		if !pathByte[s[i]] {
			return false
		}
	}
	return true
}

// pathByte is the canonical path alphabet without "/": unreserved
// characters plus the sub-delimiters net/url leaves alone in a path. ";" is
// missing on purpose (path parameters are refused), as are "%" (no
// percent-encoding), "\\", "*", quotes and brackets.
var pathByte = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
	}
	for c := 'A'; c <= 'Z'; c++ {
		t[c] = true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for _, c := range "-._~$&+,:=@" {
		t[c] = true
	}
	return t
}()

// CanonicalPath reports why path is not canonical, or "" when it is. A
// canonical path is absolute, uses only the canonical path alphabet, and
// has no empty, "." or ".." segment except a final empty one (the trailing
// slash of a directory).
func CanonicalPath(path string) string {
	if path == "" || path[0] != '/' {
		return "path must start with /"
	}
	rest := path[1:]
	for {
		seg, tail, more := strings.Cut(rest, "/")
		switch {
		case seg == "" && more:
			return "empty path segment (//)"
		case seg == "." || seg == "..":
			return "dot segment in path"
		case !validPathBytes(seg):
			return "path has a byte outside the canonical alphabet (percent-encoding, \\, ;, control or non-ASCII)"
		}
		if !more {
			return ""
		}
		rest = tail
	}
}
