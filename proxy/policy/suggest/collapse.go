package suggest

import (
	"sort"
	"strings"
)

// trie holds used paths by segment. A trailing slash is a final empty
// segment, as in policy patterns, so "/a/" is child "" of "/a".
type trie struct {
	children map[string]*trie
	used     bool // the path ending here was requested
}

func (t *trie) insert(path string) {
	n := t
	for _, seg := range strings.Split(path[1:], "/") {
		c := n.children[seg]
		if c == nil {
			if n.children == nil {
				n.children = map[string]*trie{}
			}
			c = &trie{}
			n.children[seg] = c
		}
		n = c
	}
	n.used = true
}

// count is the number of used paths at or below t.
func (t *trie) count() int {
	n := 0
	if t.used {
		n++
	}
	for _, c := range t.children {
		n += c.count()
	}
	return n
}

// covered is a pattern of the suggested policy and how many used paths it
// stands for: 1 for a literal path, more for a collapsed family.
type covered struct {
	pattern string
	paths   int
}

// collapse returns patterns that match every path in t. A directory with
// at least threshold distinct used children becomes dir/* when they are
// all leaves, dir/** otherwise, but only where mayWiden(dir) says nothing
// below dir can be a credential path. The root is never collapsed: "/*" or
// "/**" says nothing about what a workload does, and for AWS the first
// segment is the API version, which is kept as used.
func collapse(t *trie, threshold int, mayWiden func(dir string) bool) []covered {
	var out []covered
	var walk func(n *trie, dir string, depth int)
	walk = func(n *trie, dir string, depth int) {
		named := make([]string, 0, len(n.children))
		for seg := range n.children {
			if seg != "" {
				named = append(named, seg)
			}
		}
		sort.Strings(named)
		if depth > 0 && threshold > 0 && len(named) >= threshold && mayWiden(dir) {
			allLeaves := true
			for _, seg := range named {
				c := n.children[seg]
				allLeaves = allLeaves && c.used && len(c.children) == 0
			}
			if !allLeaves {
				out = append(out, covered{dir + "/**", n.count()})
				return
			}
			// "*" matches one non-empty segment: neither dir itself nor
			// its listing dir/, so those stay literal.
			if n.used {
				out = append(out, covered{dir, 1})
			}
			if _, ok := n.children[""]; ok {
				out = append(out, covered{dir + "/", 1})
			}
			out = append(out, covered{dir + "/*", len(named)})
			return
		}
		if n.used && depth > 0 {
			out = append(out, covered{dir, 1})
		}
		if _, ok := n.children[""]; ok {
			out = append(out, covered{dir + "/", 1})
		}
		for _, seg := range named {
			walk(n.children[seg], dir+"/"+seg, depth+1)
		}
	}
	walk(t, "", 0)
	sort.Slice(out, func(i, j int) bool { return out[i].pattern < out[j].pattern })
	return out
}
