package suggest

import (
	"sort"
	"strings"
)

// trie holds used paths by segment. A trailing slash is a final empty
// segment, as in policy patterns, so "/a/" is child "" of "/a".
type trie struct {
	children map[string]*trie
	// used: the path ending here was requested, by pods, requests times.
	used     bool
	pods     podSet
	requests int64
	// anyShared: some path at or below here was used by two pods or more.
	anyShared bool
}

func (t *trie) insert(path string, pods podSet, requests int64) {
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
	n.pods = n.pods.union(pods)
	n.requests += requests
}

func (t *trie) sharedHere() bool { return t.used && t.pods.shared() }

// mark sets anyShared at and below t.
func (t *trie) mark() bool {
	t.anyShared = t.sharedHere()
	for _, c := range t.children {
		if c.mark() {
			t.anyShared = true
		}
	}
	return t.anyShared
}

// sharedBelow reports whether a path strictly below t was used by two pods.
func (t *trie) sharedBelow() bool {
	for _, c := range t.children {
		if c.anyShared {
			return true
		}
	}
	return false
}

// covered is a pattern of the suggested policy and what it stands for: one
// used path for a literal, more for a collapsed family, and the pods
// behind them.
type covered struct {
	pattern  string
	paths    int
	pods     podSet
	requests int64
}

func (c *covered) add(n *trie) {
	if n.used {
		c.paths++
		c.pods = c.pods.union(n.pods)
		c.requests += n.requests
	}
}

func (c *covered) addAll(n *trie) {
	c.add(n)
	for _, ch := range n.children {
		c.addAll(ch)
	}
}

// collapse returns patterns that match every path in t. A pattern is only
// made from paths that two pods or more used, so no single pod can widen
// what its group gets by what it requests: a directory with at least
// threshold distinct children that hold such paths becomes dir/* when
// those children are shared paths with no shared path below them, dir/**
// otherwise; and only where mayWiden(dir) says nothing below dir can be a
// credential path. What one pod alone used under dir/* deeper than one
// segment stays literal. The root is never collapsed: "/*" or "/**" says
// nothing about what a workload does, and for AWS the first segment is the
// API version, which is kept as used.
func collapse(t *trie, threshold int, mayWiden func(dir string) bool) []covered {
	t.mark()
	var out []covered
	var literals func(n *trie, path string)
	literals = func(n *trie, path string) {
		if n.used {
			out = append(out, covered{pattern: path, paths: 1, pods: n.pods, requests: n.requests})
		}
		for seg, c := range n.children {
			literals(c, path+"/"+seg)
		}
	}
	var walk func(n *trie, dir string, depth int)
	walk = func(n *trie, dir string, depth int) {
		named := make([]string, 0, len(n.children))
		shared := 0
		for seg, c := range n.children {
			if seg != "" {
				named = append(named, seg)
				if c.anyShared {
					shared++
				}
			}
		}
		sort.Strings(named)
		if depth > 0 && threshold > 0 && shared >= threshold && mayWiden(dir) {
			star := true
			for _, seg := range named {
				if c := n.children[seg]; c.anyShared && (!c.sharedHere() || c.sharedBelow()) {
					star = false
				}
			}
			if !star {
				c := covered{pattern: dir + "/**"}
				c.addAll(n)
				out = append(out, c)
				return
			}
			// "*" matches one non-empty segment: neither dir itself, nor
			// its listing dir/, nor anything deeper, so those stay
			// literal.
			if n.used {
				out = append(out, covered{pattern: dir, paths: 1, pods: n.pods, requests: n.requests})
			}
			if l := n.children[""]; l != nil {
				literals(l, dir+"/")
			}
			star1 := covered{pattern: dir + "/*"}
			for _, seg := range named {
				c := n.children[seg]
				star1.add(c)
				for gseg, gc := range c.children {
					literals(gc, dir+"/"+seg+"/"+gseg)
				}
			}
			out = append(out, star1)
			return
		}
		if n.used && depth > 0 {
			out = append(out, covered{pattern: dir, paths: 1, pods: n.pods, requests: n.requests})
		}
		if l := n.children[""]; l != nil {
			literals(l, dir+"/")
		}
		for _, seg := range named {
			walk(n.children[seg], dir+"/"+seg, depth+1)
		}
	}
	walk(t, "", 0)
	sortCovered(out)
	return out
}

func sortCovered(c []covered) {
	sort.Slice(c, func(i, j int) bool { return c[i].pattern < c[j].pattern })
}
