package deploy

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// TestOperationsGuideValuesTableMatchesTheChart keeps the defaults the
// operations guide lists for the chart's values in step with values.yaml:
// an operator reads the table, not the chart.
func TestOperationsGuideValuesTableMatchesTheChart(t *testing.T) {
	raw, err := os.ReadFile("../charts/metaguard/values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var values map[string]any
	if err := yaml.Unmarshal(raw, &values); err != nil {
		t.Fatal(err)
	}
	guide, err := os.ReadFile("../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	code := regexp.MustCompile("^`([^`]*)`$")
	checked, inTable := 0, false
	for _, line := range strings.Split(string(guide), "\n") {
		if line == "| value | default | meaning |" {
			inTable = true
			continue
		}
		if inTable && !strings.HasPrefix(line, "|") {
			break
		}
		cells := strings.Split(line, " | ")
		if !inTable || len(cells) != 3 || !strings.HasPrefix(cells[0], "| `") {
			continue
		}
		keys := strings.Split(strings.TrimPrefix(cells[0], "| "), ", ")
		defaults := strings.Split(cells[1], ", ")
		if len(keys) != len(defaults) {
			continue
		}
		for i, k := range keys {
			key, ok := unquote(code, k)
			if !ok {
				continue
			}
			want, ok := unquote(code, defaults[i])
			if !ok {
				continue // prose ("none", "every taint"): not a literal value
			}
			got, found := lookup(values, key)
			if !found {
				t.Errorf("the guide lists %s, which values.yaml does not have", key)
				continue
			}
			if want == `""` {
				want = ""
			}
			if got != want {
				t.Errorf("the guide says %s defaults to %q; values.yaml has %q", key, want, got)
			}
			checked++
		}
	}
	if checked < 8 {
		t.Fatalf("only %d defaults checked: the guide's values table changed shape", checked)
	}
}

func unquote(code *regexp.Regexp, s string) (string, bool) {
	m := code.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		return "", false
	}
	return m[1], true
}

// lookup reads a dotted key of the chart's values as the text Helm would
// render for a scalar.
func lookup(values map[string]any, key string) (string, bool) {
	var v any = values
	for _, part := range strings.Split(key, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return "", false
		}
		if v, ok = m[part]; !ok {
			return "", false
		}
	}
	switch v.(type) {
	case map[string]any, []any:
		return "", false
	case nil:
		return "", true
	}
	return fmt.Sprint(v), true
}
