package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"metaguard.dev/metaguard/proxy/policy"
)

// The docs test keeps every page honest: each policy shown validates, and
// each metaguard command shown is run and prints what the page says it
// prints. docs/development.md ("Docs are tested") describes the
// conventions a page follows.

const repoRoot = "../.."

// asBinaryEnv makes the test binary behave as the metaguard binary, so
// that the shell commands of the docs run the code under test without a
// separate build.
const asBinaryEnv = "METAGUARD_TEST_AS_BINARY"

// policyKey is the policy's file name in the ConfigMap and the overlays.
const policyKey = "policy.yaml"

func TestMain(m *testing.M) {
	if os.Getenv(asBinaryEnv) == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// block is one fenced code block of a Markdown page.
type block struct {
	lang  string
	attrs map[string]string // file=NAME, invalid
	line  int               // of the opening fence, 1-based
	body  string
}

var fence = regexp.MustCompile("^( *)(```+)(.*)$")

// codeBlocks returns the fenced blocks of a page, indented ones (inside list
// items) included, with the indentation removed.
func codeBlocks(md string) []block {
	var out []block
	lines := strings.Split(md, "\n")
	for i := 0; i < len(lines); i++ {
		m := fence.FindStringSubmatch(lines[i])
		if m == nil {
			continue
		}
		indent, ticks := m[1], m[2]
		b := block{line: i + 1, attrs: map[string]string{}}
		for j, f := range strings.Fields(m[3]) {
			k, v, _ := strings.Cut(f, "=")
			if j == 0 && !strings.Contains(f, "=") {
				b.lang = f
				continue
			}
			b.attrs[k] = v
		}
		var body []string
		for i++; i < len(lines) && strings.TrimRight(lines[i], " ") != indent+ticks; i++ {
			body = append(body, strings.TrimPrefix(lines[i], indent))
		}
		b.body = strings.Join(body, "\n") + "\n"
		out = append(out, b)
	}
	return out
}

// command is one `$ ` line of a console block and the output shown for it.
type command struct {
	line int
	cmd  string
	want string
}

func consoleCommands(b block) []command {
	var out []command
	lines := strings.Split(strings.TrimSuffix(b.body, "\n"), "\n")
	for i := 0; i < len(lines); i++ {
		cmd, ok := strings.CutPrefix(lines[i], "$ ")
		if !ok {
			continue
		}
		c := command{line: b.line + 1 + i}
		for strings.HasSuffix(cmd, `\`) && i+1 < len(lines) {
			i++
			cmd = strings.TrimSuffix(cmd, `\`) + "\n" + lines[i]
		}
		c.cmd = cmd
		var want []string
		for i+1 < len(lines) && !strings.HasPrefix(lines[i+1], "$ ") {
			i++
			want = append(want, lines[i])
		}
		c.want = normalise(strings.Join(want, "\n"))
		out = append(out, c)
	}
	return out
}

func normalise(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(l, " \t")
	}
	return strings.TrimRight(strings.Join(lines, "\n"), "\n")
}

// docPages are the pages the test reads, relative to the repository root.
func docPages(t *testing.T) []string {
	t.Helper()
	pages, err := filepath.Glob(filepath.Join(repoRoot, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	pages = append([]string{filepath.Join(repoRoot, "README.md")}, pages...)
	if len(pages) < 5 {
		t.Fatalf("found pages %v; want README.md and docs/{policy,operations,design,development}.md", pages)
	}
	return pages
}

// shell runs commands as a reader of the docs would, in a directory that
// holds the repository's top-level entries (so deploy/... resolves) and
// the files a page defines, with metaguard on PATH.
type shell struct {
	dir, path string
}

func newShell(t *testing.T) *shell {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	if err := os.Symlink(exe, filepath.Join(bin, "metaguard")); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	entries, err := os.ReadDir(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() == ".git" {
			continue
		}
		if err := os.Symlink(filepath.Join(root, e.Name()), filepath.Join(dir, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	return &shell{dir: dir, path: bin + string(os.PathListSeparator) + os.Getenv("PATH")}
}

func (s *shell) write(t *testing.T, name, data string) {
	t.Helper()
	if name == "" || strings.ContainsAny(name, "/\\") {
		t.Fatalf("file=%q must be a plain file name", name)
	}
	p := filepath.Join(s.dir, name)
	if _, err := os.Lstat(p); err == nil {
		t.Fatalf("file=%s is defined twice on the page, or shadows the repository's %s", name, name)
	}
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// run runs one command line with sh in dir and returns its combined
// output and exit code.
func (s *shell) run(t *testing.T, dir, cmd string) (string, int) {
	t.Helper()
	c := exec.CommandContext(t.Context(), "sh", "-c", cmd)
	c.Dir = dir
	c.Env = append(os.Environ(), "PATH="+s.path, asBinaryEnv+"=1")
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out
	err := c.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running %q: %v", cmd, err)
	}
	return normalise(out.String()), code
}

func isPolicy(b block) bool {
	return b.lang == "yaml" && strings.HasPrefix(b.body, "apiVersion: "+policy.APIVersion)
}

func TestDocsPoliciesAndCommands(t *testing.T) {
	var policies, commands int
	for _, page := range docPages(t) {
		name, _ := filepath.Rel(repoRoot, page)
		data, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		blocks := codeBlocks(string(data))
		sh := newShell(t)
		for _, b := range blocks {
			where := fmt.Sprintf("%s:%d", name, b.line)
			if isPolicy(b) {
				policies++
				_, err := policy.Parse(where, []byte(b.body))
				_, invalid := b.attrs["invalid"]
				switch {
				case err != nil && !invalid:
					t.Errorf("%s: a policy the docs show does not validate:\n%v", where, err)
				case err == nil && invalid:
					t.Errorf("%s: a policy marked invalid validates", where)
				}
			}
			if f, ok := b.attrs["file"]; ok {
				sh.write(t, f, b.body)
			}
		}
		for _, c := range inlineCommands(string(data)) {
			commands++
			if out, code := sh.run(t, sh.dir, c.cmd); code != 0 {
				t.Errorf("%s:%d: `%s` exits %d:\n%s", name, c.line, c.cmd, code, out)
			}
		}
		var ran []string
		for _, b := range blocks {
			if b.lang == "console" {
				for _, c := range consoleCommands(b) {
					ran = append(ran, c.cmd)
				}
			}
		}
		for _, b := range blocks {
			if f, ok := b.attrs["file"]; ok && b.lang == "sh" {
				// A script the page writes must be one the page runs.
				if !slices.ContainsFunc(ran, func(c string) bool { return strings.Contains(c, f) }) {
					t.Errorf("%s:%d: script %s is never run in a console block", name, b.line, f)
				}
				continue
			}
			if b.lang != "console" {
				checkNotHidden(t, name, b)
				continue
			}
			for _, c := range consoleCommands(b) {
				commands++
				t.Run(fmt.Sprintf("%s:%d", name, c.line), func(t *testing.T) {
					got, _ := sh.run(t, sh.dir, c.cmd)
					if got != c.want {
						t.Errorf("%s:%d: `%s` prints\n%s\n\nbut the page shows\n%s", name, c.line, c.cmd, got, c.want)
					}
				})
			}
		}
	}
	if policies < 4 || commands < 5 {
		t.Errorf("found %d policies and %d console commands in the docs; the parser has likely lost them", policies, commands)
	}
}

// checkNotHidden fails for a validate or explain command shown in a block
// the test does not run: show those in a console block, with their output.
func checkNotHidden(t *testing.T, page string, b block) {
	t.Helper()
	for i, l := range strings.Split(b.body, "\n") {
		if m := runnable.FindString(l); m != "" {
			t.Errorf("%s:%d: %q is in a %q block, which is not run; show it in a console block", page, b.line+1+i, m, b.lang)
		}
	}
}

var commentedCommand = regexp.MustCompile(`^#\s+(metaguard (?:validate|explain) .*)$`)

// inlineCommands are the validate and explain commands a page names in
// running text, such as `metaguard validate --config suggested.yaml`: they
// must succeed. A synopsis with a placeholder (FILE, METHOD, ...) is not a
// command.
func inlineCommands(md string) []command {
	var out []command
	for i, l := range strings.Split(md, "\n") {
		if fence.MatchString(l) {
			continue
		}
		for _, m := range inlineCommand.FindAllStringSubmatch(l, -1) {
			if placeholder.MatchString(m[1]) {
				continue
			}
			out = append(out, command{line: i + 1, cmd: m[1]})
		}
	}
	return out
}

var (
	inlineCommand = regexp.MustCompile("`(metaguard (?:validate|explain) [^`]*)`")
	placeholder   = regexp.MustCompile(`\b(FILE|F|METHOD|PATH|QUERY|NS|NAME|NAMESPACE|SA|KEY)\b|\.\.\.|\[`)
)

var runnable = regexp.MustCompile(`metaguard (validate|explain) .*`)

// TestShippedPolicyComments runs the commands that the shipped policies
// suggest in their comments, next to the policy, as an operator editing it
// would.
func TestShippedPolicyComments(t *testing.T) {
	overlays, err := filepath.Glob(filepath.Join(repoRoot, "deploy", "overlays", "*", "policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	presets, err := filepath.Glob(filepath.Join(repoRoot, "charts", "metaguard", "files", "policies", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	files := append(overlays, presets...)
	if len(overlays) < 3 || len(presets) < 4 {
		t.Fatalf("shipped policies: %v", files)
	}
	sh := newShell(t)
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for i, l := range strings.Split(string(data), "\n") {
			m := commentedCommand.FindStringSubmatch(l)
			if m == nil {
				continue
			}
			n++
			// The file as an operator has it: under its own name, and as
			// policy.yaml, the ConfigMap's key and the overlays' file name.
			dir := t.TempDir()
			for _, name := range []string{filepath.Base(f), policyKey} {
				if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if out, code := sh.run(t, dir, m[1]); code != 0 {
				t.Errorf("%s:%d: `%s` exits %d:\n%s", f, i+1, m[1], code, out)
			}
		}
		if n == 0 {
			t.Errorf("%s suggests no metaguard command to check it with", f)
		}
	}
}

// TestDocsLinks checks that every relative link of the pages names a file
// of the repository and, with a #fragment, a heading of that page.
func TestDocsLinks(t *testing.T) {
	for _, page := range docPages(t) {
		data, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range mdLink.FindAllStringSubmatch(string(data), -1) {
			target, frag, _ := strings.Cut(m[1], "#")
			if strings.Contains(target, "://") || strings.HasPrefix(m[1], "mailto:") {
				continue
			}
			file := page
			if target != "" {
				file = filepath.Join(filepath.Dir(page), target)
			}
			body, err := os.ReadFile(file)
			if err != nil {
				t.Errorf("%s: link %q: %v", page, m[1], err)
				continue
			}
			if frag != "" && !headingAnchors(string(body))[frag] {
				t.Errorf("%s: link %q: %s has no heading with that anchor", page, m[1], target)
			}
		}
	}
}

var (
	mdLink  = regexp.MustCompile(`\]\(([^)\s]+)\)`)
	heading = regexp.MustCompile(`(?m)^#{1,6} (.+)$`)
	notSlug = regexp.MustCompile(`[^a-z0-9 _-]`)
)

// headingAnchors are the anchors GitHub makes of a page's headings:
// lower case, punctuation dropped, spaces as dashes.
func headingAnchors(md string) map[string]bool {
	out := map[string]bool{}
	for _, b := range codeBlocks(md) {
		md = strings.Replace(md, b.body, "", 1) // a "# comment" in a code block is no heading
	}
	for _, m := range heading.FindAllStringSubmatch(md, -1) {
		out[strings.ReplaceAll(notSlug.ReplaceAllString(strings.ToLower(m[1]), ""), " ", "-")] = true
	}
	return out
}
