package deploy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

const wrapper = "image/iptables-wrapper"

// TestIPTablesWrapper runs the image's wrapper on this machine's iptables
// (Debian bookworm, the runtime image's base) inside a network namespace
// made for each case, so the node's own rules are never read or touched.
func TestIPTablesWrapper(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces and write iptables rules in them")
	}
	for _, tool := range []string{"unshare", "iptables-nft", "iptables-legacy", "ip6tables-nft", "ip6tables-legacy"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed", tool)
		}
	}
	abs, err := filepath.Abs(wrapper)
	if err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name   string
		setup  string // shell run in the fresh namespace before the wrapper
		cache  string // contents of the cache file before the run; "" = none
		invoke string // the name the wrapper is called by
		want   string // regexp matching `<invoke> --version`
		cached string // what the cache file must hold afterwards
	}{
		{
			name:   "a node with no rules at all gets nft",
			invoke: "iptables", want: `^iptables v1\.8\.\d+ \(nf_tables\)`, cached: "nft",
		},
		{
			name:   "the kubelet's canary in the legacy mangle table picks legacy",
			setup:  "iptables-legacy -t mangle -N KUBE-KUBELET-CANARY",
			invoke: "iptables", want: `^iptables v1\.8\.\d+ \(legacy\)`, cached: "legacy",
		},
		{
			name:   "the kubelet's hint in the nft mangle table picks nft even when legacy holds more rules",
			setup:  "iptables-nft -t mangle -N KUBE-IPTABLES-HINT; iptables-legacy -A INPUT -j ACCEPT; iptables-legacy -A INPUT -j ACCEPT",
			invoke: "iptables", want: `^iptables v1\.8\.\d+ \(nf_tables\)`, cached: "nft",
		},
		{
			name:   "an IPv6-only hint in legacy picks legacy",
			setup:  "ip6tables-legacy -t mangle -N KUBE-IPTABLES-HINT",
			invoke: "iptables", want: `^iptables v1\.8\.\d+ \(legacy\)`, cached: "legacy",
		},
		{
			name:   "without kubelet chains the back end holding more rules wins",
			setup:  "iptables-legacy -A INPUT -j ACCEPT; iptables-legacy -A INPUT -j ACCEPT; iptables-nft -A INPUT -j ACCEPT",
			invoke: "iptables", want: `^iptables v1\.8\.\d+ \(legacy\)`, cached: "legacy",
		},
		{
			name:   "ip6tables-save runs the ip6tables save tool of the chosen back end",
			setup:  "iptables-legacy -t mangle -N KUBE-KUBELET-CANARY",
			invoke: "ip6tables-save", want: `^ip6tables-save v1\.8\.\d+ \(legacy\)`, cached: "legacy",
		},
		{
			name:   "iptables-restore runs the restore tool of the chosen back end",
			setup:  "iptables-nft -t mangle -N KUBE-KUBELET-CANARY",
			invoke: "iptables-restore", want: `^iptables-nft-restore v1\.8\.\d+ \(nf_tables\)`, cached: "nft",
		},
		{
			name:   "a cached answer is used without detecting again",
			cache:  "legacy",
			invoke: "iptables", want: `^iptables v1\.8\.\d+ \(legacy\)`, cached: "legacy",
		},
		{
			name:   "a cache holding anything but nft or legacy is ignored and rewritten",
			cache:  "/bin/sh",
			invoke: "ip6tables", want: `^ip6tables v1\.8\.\d+ \(nf_tables\)`, cached: "nft",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			bin, run := t.TempDir(), t.TempDir()
			link := filepath.Join(bin, c.invoke)
			if err := os.Symlink(abs, link); err != nil {
				t.Fatal(err)
			}
			cache := filepath.Join(run, "iptables-mode")
			if c.cache != "" {
				if err := os.WriteFile(cache, []byte(c.cache+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			out := inNewNetns(t, run, c.setup+"\n\""+link+"\" --version")
			if !regexp.MustCompile(c.want).MatchString(out) {
				t.Errorf("%s --version printed %q, want a match for %s", c.invoke, out, c.want)
			}
			got, err := os.ReadFile(cache)
			if err != nil {
				t.Fatal(err)
			}
			if strings.TrimSpace(string(got)) != c.cached {
				t.Errorf("cache holds %q, want %q", got, c.cached)
			}
		})
	}

	t.Run("a name it does not know is refused instead of guessed", func(t *testing.T) {
		link := filepath.Join(t.TempDir(), "iptables-apply")
		if err := os.Symlink(abs, link); err != nil {
			t.Fatal(err)
		}
		err := exec.CommandContext(t.Context(), link, "--version").Run()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 2 {
			t.Errorf("exit = %v, want status 2", err)
		}
	})
}

// inNewNetns runs script with sh in a network namespace that exists only
// for that process: it disappears with it, whatever the test does next.
func inNewNetns(t *testing.T, runDir, script string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--net", "sh", "-eu", "-c", script)
	cmd.Env = append(os.Environ(), "METAGUARD_RUN_DIR="+runDir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return string(out)
}

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
