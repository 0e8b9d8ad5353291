//go:build e2e

package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// operatorGuide is the operations guide. The node tests install, upgrade,
// reconfigure and uninstall metaguard by its blocks, verbatim but for the
// image and the path of this checkout, so that the guide says exactly
// what the tests do.
const operatorGuide = "../docs/operations.md"

// The guide's placeholders: its image and the checkout beside the
// operator's kustomizations.
const (
	guideRepo     = "REGISTRY/metaguard"
	guideTag      = "v0.1.0"
	guideCheckout = "../metaguard/"
)

// guideSection is the text of one "## " section of the guide.
func guideSection(t *testing.T, heading string) string {
	t.Helper()
	return section(t, operatorGuide, heading)
}

// section is the text of one "## " section of a Markdown file.
func section(t *testing.T, file, heading string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, "\n## "+heading+"\n")
	if i < 0 {
		t.Fatalf("%s has no section %q", file, heading)
	}
	s = s[i+1:]
	if j := strings.Index(s[3:], "\n## "); j >= 0 {
		s = s[:j+4]
	}
	return s
}

var fence = regexp.MustCompile("(?ms)^```(\\w+)\\n(.*?)^```$")

// guideFile is the yaml block of the section whose first line is
// "# <title>".
func guideFile(t *testing.T, section, title string) string {
	t.Helper()
	for _, m := range fence.FindAllStringSubmatch(guideSection(t, section), -1) {
		if m[1] == "yaml" && strings.HasPrefix(m[2], "# "+title+"\n") {
			return m[2]
		}
	}
	t.Fatalf("%s, section %s: no yaml block titled %q", operatorGuide, section, title)
	return ""
}

// guideCommands are the kubectl command lines of the section's sh blocks,
// comments dropped, split into arguments.
func guideCommands(t *testing.T, section string) [][]string {
	t.Helper()
	var cmds [][]string
	for _, m := range fence.FindAllStringSubmatch(guideSection(t, section), -1) {
		if m[1] != "sh" {
			continue
		}
		for _, line := range strings.Split(m[2], "\n") {
			line, _, _ = strings.Cut(line, "#")
			if f := strings.Fields(line); len(f) > 0 {
				if f[0] != "kubectl" {
					t.Fatalf("%s, section %s: %q is not a kubectl command the node tests can run", operatorGuide, section, line)
				}
				cmds = append(cmds, f[1:])
			}
		}
	}
	if len(cmds) == 0 {
		t.Fatalf("%s, section %s: no commands", operatorGuide, section)
	}
	return cmds
}

// writeGuideFile writes one of the guide's kustomizations (title
// "install/kustomization.yaml", ...) into the operator's directory, with
// the image ref and this checkout in place of the placeholders. edit, when
// not nil, changes the text first, as an operator adding to it would.
func (n *realNode) writeGuideFile(section, title, ref string, edit func(string) string) {
	n.t.Helper()
	name, _, _ := strings.Cut(title, ",")
	path := filepath.Join(n.dir, name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		n.t.Fatal(err)
	}
	root, err := filepath.Abs("..")
	if err != nil {
		n.t.Fatal(err)
	}
	rel, err := filepath.Rel(filepath.Dir(path), root)
	if err != nil {
		n.t.Fatal(err)
	}
	text := guideFile(n.t, section, title)
	if edit != nil {
		text = edit(text)
	}
	for _, placeholder := range []string{"newName: " + guideRepo, "newTag: " + guideTag, guideCheckout} {
		if !strings.Contains(text, placeholder) {
			n.t.Fatalf("%s: %q no longer shows %q, which the node tests replace", operatorGuide, title, placeholder)
		}
	}
	repo, tag := splitRef(n.t, ref)
	text = strings.NewReplacer("newName: "+guideRepo, "newName: "+repo, "newTag: "+guideTag, "newTag: "+tag, guideCheckout, rel+"/").Replace(text)
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		n.t.Fatal(err)
	}
}

// runGuide runs the section's kubectl commands in order, the
// kustomization directories (install, cleanup) being the operator's.
func (n *realNode) runGuide(section string, only ...int) {
	n.t.Helper()
	for i, args := range guideCommands(n.t, section) {
		if len(only) > 0 && !slices.Contains(only, i) {
			continue
		}
		args = append([]string(nil), args...)
		for j := 1; j < len(args); j++ {
			if args[j-1] == "-k" {
				args[j] = filepath.Join(n.dir, args[j])
			}
		}
		// The guide's rollout status waits forever; a test must not.
		if slices.Contains(args, "rollout") && slices.Contains(args, "status") {
			args = append(args, "--timeout=180s")
		}
		n.kubectl(args...)
	}
}

// TestNodeREADMEInstallIsTheGuides keeps the README's short install the
// one the node tests run: the same kustomization and commands as the
// guide's Install.
func TestNodeREADMEInstallIsTheGuides(t *testing.T) {
	blocks := func(text string) []string {
		var out []string
		for _, m := range fence.FindAllStringSubmatch(text, -1) {
			if m[1] == "yaml" || m[1] == "sh" {
				out = append(out, m[2])
			}
		}
		return out
	}
	readme := blocks(section(t, "../README.md", "Install"))
	guide := blocks(guideSection(t, "Install"))
	if len(readme) != 2 || len(guide) < 2 || readme[0] != guideFile(t, "Install", "install/kustomization.yaml") || readme[1] != guide[1] {
		t.Errorf("README.md's Install blocks differ from %s's install kustomization and commands:\n%q\n%q", operatorGuide, readme, guide)
	}
}
