package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"metaguard.dev/metaguard/redirect"
)

const wrapper = "../../deploy/image/iptables-wrapper"

// wrapperEnv is the environment of a wrapper run: the test binary as
// metaguard (asBinaryEnv, see TestMain), so that the image's iptables
// wrapper is checked against the very code the daemon runs, and a run
// directory of the test's own.
type wrapperEnv struct {
	bin, runDir string
	metaguard   string // METAGUARD_BIN; "" leaves it unset and metaguard out of PATH
}

// inNetns runs script with sh in a network namespace that exists only for
// that process, so the machine's own rules are never read or touched, and
// returns its output.
func (e wrapperEnv) inNetns(t *testing.T, script string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--net", "sh", "-eu", "-c", script)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "METAGUARD_RUN_DIR=" + e.runDir, asBinaryEnv + "=1"}
	if e.metaguard != "" {
		cmd.Env = append(cmd.Env, "METAGUARD_BIN="+e.metaguard)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func requireWrapperTools(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces and write iptables rules in them")
	}
	for _, tool := range []string{"unshare", "iptables-nft", "iptables-legacy", "ip6tables-nft", "ip6tables-legacy"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed", tool)
		}
	}
}

func newWrapperEnv(t *testing.T, invoke string) (wrapperEnv, string) {
	t.Helper()
	abs, err := filepath.Abs(wrapper)
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	e := wrapperEnv{bin: t.TempDir(), runDir: t.TempDir(), metaguard: self}
	link := filepath.Join(e.bin, invoke)
	if err := os.Symlink(abs, link); err != nil {
		t.Fatal(err)
	}
	return e, link
}

// TestIPTablesWrapperFollowsMetaguardsChoice runs the wrapper on this
// machine's iptables (Debian bookworm, the runtime image's base) in a
// network namespace made for each case, next to `metaguard
// iptables-backend` on the same rules: the two must agree, whatever the
// node holds.
func TestIPTablesWrapperFollowsMetaguardsChoice(t *testing.T) {
	requireWrapperTools(t)
	cases := []struct {
		name   string
		setup  string // shell run in the fresh namespace first
		invoke string // the name the wrapper is called by
		want   string // the back end both must choose
		tool   string // regexp matching `<invoke> --version`
	}{
		{"a node with no rules at all: nft", "", "iptables", "nft", `^iptables v1\.8\.\d+ \(nf_tables\)`},
		{"the kubelet's canary in the legacy mangle table: legacy", "iptables-legacy -t mangle -N KUBE-KUBELET-CANARY", "iptables", "legacy", `^iptables v1\.8\.\d+ \(legacy\)`},
		{"the kubelet's hint in the nft mangle table wins over more legacy rules",
			"iptables-nft -t mangle -N KUBE-IPTABLES-HINT; iptables-legacy -A INPUT -j ACCEPT; iptables-legacy -A INPUT -j ACCEPT", "iptables", "nft", `^iptables v1\.8\.\d+ \(nf_tables\)`},
		{"an IPv6-only hint in legacy: legacy", "ip6tables-legacy -t mangle -N KUBE-IPTABLES-HINT", "iptables", "legacy", `^iptables v1\.8\.\d+ \(legacy\)`},
		{"without kubelet chains the back end holding more rules",
			"iptables-legacy -A INPUT -j ACCEPT; iptables-legacy -A INPUT -j ACCEPT; iptables-nft -A INPUT -j ACCEPT", "iptables", "legacy", `^iptables v1\.8\.\d+ \(legacy\)`},
		{"metaguard's own jumps do not count towards a back end",
			"iptables-legacy -N METAGUARD-FORWARD; iptables-legacy -A FORWARD -j METAGUARD-FORWARD; iptables-legacy -t nat -N METAGUARD-OUTPUT; iptables-legacy -t nat -A OUTPUT -j METAGUARD-OUTPUT", "iptables", "nft", `^iptables v1\.8\.\d+ \(nf_tables\)`},
		{"ip6tables-save runs the chosen back end's save tool", "iptables-legacy -t mangle -N KUBE-KUBELET-CANARY", "ip6tables-save", "legacy", `^ip6tables-save v1\.8\.\d+ \(legacy\)`},
		{"iptables-restore runs the chosen back end's restore tool", "iptables-nft -t mangle -N KUBE-KUBELET-CANARY", "iptables-restore", "nft", `^iptables-nft-restore v1\.8\.\d+ \(nf_tables\)`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e, link := newWrapperEnv(t, c.invoke)
			out, err := e.inNetns(t, c.setup+"\n\"$METAGUARD_BIN\" iptables-backend\n\""+link+"\" --version")
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			lines := strings.SplitN(strings.TrimSpace(out), "\n", 2)
			if len(lines) != 2 {
				t.Fatalf("output %q", out)
			}
			if lines[0] != c.want {
				t.Errorf("metaguard iptables-backend chose %q, want %q", lines[0], c.want)
			}
			if !regexp.MustCompile(c.tool).MatchString(lines[1]) {
				t.Errorf("the wrapper ran %q, want a match for %s: it disagrees with metaguard's %q", lines[1], c.tool, lines[0])
			}
			got, err := os.ReadFile(filepath.Join(e.runDir, redirect.BackendFileName))
			if err != nil {
				t.Fatal(err)
			}
			if strings.TrimSpace(string(got)) != lines[0] {
				t.Errorf("the wrapper recorded %q, want metaguard's %q", got, lines[0])
			}
		})
	}
}

func TestIPTablesWrapperUsesTheDaemonsRecord(t *testing.T) {
	requireWrapperTools(t)
	t.Run("the daemon's record wins over what detection would say (an explicit --iptables-mode)", func(t *testing.T) {
		e, link := newWrapperEnv(t, "iptables")
		if err := redirect.WriteBackendFile(e.runDir, "legacy"); err != nil {
			t.Fatal(err)
		}
		// An empty node: detection would say nft.
		e.metaguard = "/bin/false"
		out, err := e.inNetns(t, "\""+link+"\" --version")
		if err != nil || !strings.Contains(out, "(legacy)") {
			t.Fatalf("ran %q (%v), want iptables-legacy without asking metaguard", out, err)
		}
	})
	t.Run("a record naming no back end is replaced by metaguard's answer", func(t *testing.T) {
		e, link := newWrapperEnv(t, "ip6tables")
		record := filepath.Join(e.runDir, redirect.BackendFileName)
		if err := os.WriteFile(record, []byte("/bin/sh\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := e.inNetns(t, "\""+link+"\" --version")
		if err != nil || !strings.Contains(out, "(nf_tables)") {
			t.Fatalf("ran %q (%v), want ip6tables-nft", out, err)
		}
		if got, _ := os.ReadFile(record); string(got) != "nft\n" {
			t.Errorf("record holds %q, want nft", got)
		}
	})
	for _, tt := range []struct{ name, metaguard string }{
		{"without a record and without metaguard in PATH, the wrapper fails instead of guessing", ""},
		{"without a record, a failing metaguard makes the wrapper fail instead of guessing", "/bin/false"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e, link := newWrapperEnv(t, "iptables")
			e.metaguard = tt.metaguard
			out, err := e.inNetns(t, "\""+link+"\" --version")
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(out, "not guessing") {
				t.Fatalf("got %v %q, want exit status 1 saying it does not guess", err, out)
			}
			if strings.Contains(out, "iptables v1") {
				t.Errorf("a back end ran: %q", out)
			}
		})
	}
	t.Run("a name it does not know is refused", func(t *testing.T) {
		_, link := newWrapperEnv(t, "iptables-apply")
		err := exec.CommandContext(t.Context(), link, "--version").Run()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 2 {
			t.Errorf("exit = %v, want status 2", err)
		}
	})
}
