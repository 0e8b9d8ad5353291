package redirect

import (
	"context"
	"slices"
	"strings"
	"testing"
)

func TestEnsureChainCommands(t *testing.T) {
	r := func(name string) []string {
		return []string{"-d", "10.9.9.9/32", "-m", "comment", "--comment", name, "-j", "DROP"}
	}
	tests := []struct {
		name      string
		cur, want [][]string
		wantOps   []string // kinds of writes, in order
	}{
		{"a chain already right gets no command", [][]string{r("a"), r("b")}, [][]string{r("a"), r("b")}, nil},
		{"a flushed chain gets every rule inserted in order", nil, [][]string{r("a"), r("b")},
			[]string{"insert 1 a", "insert 2 b"}},
		{"a removed rule is deleted and nothing is inserted", [][]string{r("a"), r("b"), r("c")}, [][]string{r("b"), r("c")},
			[]string{"delete-id 1"}},
		{"a renamed rule's successor is inserted before the old rule is deleted", [][]string{r("old"), r("b")}, [][]string{r("new"), r("b")},
			[]string{"insert 2 new", "delete-id 1"}},
		{"a swapped pair costs one insert and one delete", [][]string{r("b"), r("a")}, [][]string{r("a"), r("b")},
			[]string{"insert 1 a", "delete-id 3"}},
		{"a duplicate is deleted", [][]string{r("a"), r("a"), r("b")}, [][]string{r("a"), r("b")},
			[]string{"delete-id 2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ft := newFakeTables()
			ft.run("-t filter -N X")
			for _, c := range tt.cur {
				ft.run("-t filter -A X " + quote(c))
			}
			if _, err := ensureChain(context.Background(), ft, "filter", "X", tt.want); err != nil {
				t.Fatal(err)
			}
			var ops []string
			for _, w := range ft.writes() {
				f := strings.Fields(w)
				op := f[0] + " " + f[3]
				if f[0] == "insert" {
					op += " " + strings.Trim(f[9], `"`)
				}
				ops = append(ops, op)
			}
			if !slices.Equal(ops, tt.wantOps) {
				t.Errorf("commands %q, want %q", ops, tt.wantOps)
			}
			got, _, _ := listRules(ft, "filter", "X")
			if !slices.EqualFunc(got, tt.want, slices.Equal) {
				t.Errorf("chain holds %q, want %q", got, tt.want)
			}
		})
	}
}
