package deploy

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The image's iptables wrapper (image/iptables-wrapper) is tested in
// cmd/metaguard/wrapper_test.go, against the back-end choice of the
// metaguard binary it asks.

// TestDockerfile checks what a broken image build would only show on a
// machine with a container engine.
func TestDockerfile(t *testing.T) {
	df, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	ignore := readDockerignore(t)

	t.Run("every file it copies from the context exists and survives .dockerignore", func(t *testing.T) {
		srcs := copySources(df)
		if len(srcs) == 0 {
			t.Fatal("found no COPY lines")
		}
		for _, src := range srcs {
			if src == "." {
				continue
			}
			if _, err := os.Stat(filepath.Join("..", src)); err != nil {
				t.Errorf("COPY %s: %v", src, err)
			}
			if dockerignored(ignore, src) {
				t.Errorf("COPY %s: excluded by .dockerignore", src)
			}
		}
	})

	t.Run("the binary's packages reach the build context", func(t *testing.T) {
		for _, p := range []string{"go.mod", "go.sum", "cmd/metaguard/main.go", "proxy/policy/policy.go", "redirect/doc.go", "identity/identity.go"} {
			if dockerignored(ignore, p) {
				t.Errorf("%s is excluded by .dockerignore", p)
			}
		}
		for _, p := range []string{".git/HEAD", "e2e/e2e_test.go", "proxy/policy/decide_test.go", "deploy/base/daemonset.yaml"} {
			if !dockerignored(ignore, p) {
				t.Errorf("%s is sent to the build for nothing", p)
			}
		}
	})

	t.Run("the version is injected into a variable that main declares", func(t *testing.T) {
		m := regexp.MustCompile(`-X main\.(\w+)=`).FindSubmatch(df)
		if m == nil {
			t.Fatal("no -X main.<var>= in the Dockerfile")
		}
		files, _ := filepath.Glob("../cmd/metaguard/*.go")
		if len(files) == 0 {
			t.Skip("cmd/metaguard has no Go files yet")
		}
		decl := regexp.MustCompile(`(?m)^\s*(var\s+)?` + string(m[1]) + `\s*(string\s*)?=`)
		for _, f := range files {
			src, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if decl.Match(src) {
				return
			}
		}
		t.Errorf("no package-level %s in cmd/metaguard: -X would set nothing", m[1])
	})
}

// copySources lists the build-context sources of COPY lines (not
// COPY --from, which copies from another stage).
func copySources(df []byte) []string {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(df))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 || !strings.EqualFold(f[0], "COPY") {
			continue
		}
		args := f[1:]
		for len(args) > 0 && strings.HasPrefix(args[0], "--") {
			if strings.HasPrefix(args[0], "--from") {
				args = nil
				break
			}
			args = args[1:]
		}
		if len(args) >= 2 {
			out = append(out, args[:len(args)-1]...)
		}
	}
	return out
}

func readDockerignore(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile("../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	var pats []string
	for _, l := range strings.Split(string(data), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			pats = append(pats, l)
		}
	}
	return pats
}

// dockerignored applies .dockerignore rules the way Docker does for the
// patterns used here: a pattern excludes a path when it matches the path or
// one of its parent directories, "**/" matches any number of leading
// directories, "!" re-includes, and the last matching pattern wins.
func dockerignored(patterns []string, path string) bool {
	parts := strings.Split(path, "/")
	ignored := false
	for _, p := range patterns {
		neg := strings.HasPrefix(p, "!")
		p = strings.TrimPrefix(p, "!")
		for i := 1; i <= len(parts); i++ {
			if globMatch(p, parts[:i]) {
				ignored = !neg
				break
			}
		}
	}
	return ignored
}

func globMatch(pattern string, parts []string) bool {
	if rest, ok := strings.CutPrefix(pattern, "**/"); ok {
		for i := range parts {
			if globMatch(rest, parts[i:]) {
				return true
			}
		}
		return false
	}
	ok, err := filepath.Match(pattern, strings.Join(parts, "/"))
	return err == nil && ok
}
