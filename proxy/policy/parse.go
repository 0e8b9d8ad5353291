package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// ValidationError lists every problem found in a policy document, each
// with the line it is on, so an operator fixes them all in one pass.
type ValidationError struct {
	Source   string
	Problems []Problem
}

// Problem is one thing wrong with a policy document.
type Problem struct {
	Line  int    // 1-based; 0 when the problem has no single line
	Field string // e.g. rules[2].allow[0].paths[1]
	Msg   string
}

func (e *ValidationError) Error() string {
	var b strings.Builder
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.Source)
		if p.Line > 0 {
			b.WriteByte(':')
			b.WriteString(strconv.Itoa(p.Line))
		}
		b.WriteString(": ")
		if p.Field != "" {
			b.WriteString(p.Field)
			b.WriteString(": ")
		}
		b.WriteString(p.Msg)
	}
	return b.String()
}

// maxPolicyBytes bounds what Load reads: a policy is a few kilobytes, and a
// ConfigMap cannot exceed 1 MiB.
const maxPolicyBytes = 1 << 20

// Load reads and parses the policy file at path.
func Load(path string) (*Policy, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading policy: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxPolicyBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading policy %s: %w", path, err)
	}
	if len(data) > maxPolicyBytes {
		return nil, fmt.Errorf("reading policy %s: larger than %d bytes", path, maxPolicyBytes)
	}
	return Parse(path, data)
}

// Parse parses and validates a policy document. source names it in error
// messages. On error the result is nil and the error is a
// *ValidationError: a policy is never half applied.
func Parse(source string, data []byte) (*Policy, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, yamlError(source, err)
	}
	if root.Kind == 0 || len(root.Content) == 0 {
		return nil, &ValidationError{Source: source, Problems: []Problem{{Msg: "empty policy document"}}}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var spec fileSpec
	if err := dec.Decode(&spec); err != nil {
		return nil, yamlError(source, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, &ValidationError{Source: source, Problems: []Problem{{Line: extra.Line, Msg: "more than one YAML document; a policy file holds exactly one"}}}
	}
	c := compiler{doc: root.Content[0]}
	p := c.compile(&spec)
	if len(c.problems) > 0 {
		sort.SliceStable(c.problems, func(i, j int) bool { return c.problems[i].Line < c.problems[j].Line })
		return nil, &ValidationError{Source: source, Problems: c.problems}
	}
	p.Source = source
	return p, nil
}

// yamlError turns the YAML library's messages ("yaml: line 7: field
// podselector not found in type policy.ruleSpec") into Problems with
// lines and without Go type names.
func yamlError(source string, err error) error {
	var te *yaml.TypeError
	var msgs []string
	if errors.As(err, &te) {
		msgs = te.Errors
	} else {
		msgs = []string{err.Error()}
	}
	ve := &ValidationError{Source: source}
	for _, m := range msgs {
		m = strings.TrimPrefix(m, "yaml: ")
		line := 0
		if rest, ok := strings.CutPrefix(m, "line "); ok {
			if n, tail, ok := strings.Cut(rest, ": "); ok {
				if v, err := strconv.Atoi(n); err == nil {
					line, m = v, tail
				}
			}
		}
		m = strings.NewReplacer("in type policy.fileSpec", "in Policy",
			"in type policy.ruleSpec", "in rule", "in type policy.endpointSpec", "in endpoint",
			"in type policy.allowSpec", "in allow entry", "in type policy.selectorSpec", "in selector",
			"in type policy.requirementSpec", "in matchExpressions entry",
			"in type policy.rateLimitSpec", "in rateLimit").Replace(m)
		ve.Problems = append(ve.Problems, Problem{Line: line, Msg: m})
	}
	return ve
}

// fieldPath names a place in the document, e.g. rules[2].allow[0].paths.
type fieldPath []any

func (f fieldPath) String() string {
	var b strings.Builder
	for _, e := range f {
		switch v := e.(type) {
		case int:
			fmt.Fprintf(&b, "[%d]", v)
		case string:
			if b.Len() > 0 {
				b.WriteByte('.')
			}
			b.WriteString(v)
		}
	}
	return b.String()
}

// lineOf finds the line of the deepest node on the path that exists, so a
// missing field is reported where its parent is.
func lineOf(n *yaml.Node, path fieldPath) int {
	line := n.Line
	for _, e := range path {
		var next *yaml.Node
		switch v := e.(type) {
		case string:
			if n.Kind == yaml.MappingNode {
				for i := 0; i+1 < len(n.Content); i += 2 {
					if n.Content[i].Value == v {
						next = n.Content[i+1]
						if next.Kind == yaml.ScalarNode || next.Kind == 0 {
							line = n.Content[i].Line
						}
						break
					}
				}
			}
		case int:
			if n.Kind == yaml.SequenceNode && v < len(n.Content) {
				next = n.Content[v]
			}
		}
		if next == nil {
			return line
		}
		n = next
		if n.Line > 0 {
			line = n.Line
		}
	}
	return line
}
