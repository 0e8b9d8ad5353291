package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"metaguard.dev/metaguard/e2e/sandbox"
)

func main() { os.Exit(run()) }

func run() int {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	out := fs.String("out", "BENCHMARKS.md", "where the report goes")
	skip := fs.String("skip", "", "phases to leave out, comma-separated: load, scale, gobench")
	var lo loadOptions
	fs.DurationVar(&lo.duration, "duration", 6*time.Second, "length of one measured wrk run")
	fs.DurationVar(&lo.warmup, "warmup", time.Second, "wrk warm-up before each measured run")
	fs.IntVar(&lo.rounds, "rounds", 3, "rounds of every row; tables show medians")
	fs.IntVar(&lo.threads, "threads", 1, "wrk threads")
	fs.IntVar(&lo.conns, "connections", 16, "wrk connections")
	fs.BoolVar(&lo.profile, "profile", true, "profile metaguard with perf during one extra row-3 run")
	var so scaleOptions
	fs.IntVar(&so.pods, "scale-pods", 150000, "pods in the API server for the identity-scale phase")
	fs.IntVar(&so.nodes, "scale-nodes", 1000, "nodes those pods are spread over, this one included")
	fs.IntVar(&so.nodePods, "node-pods", 250, "pods on this node")
	fs.IntVar(&so.namespaces, "scale-namespaces", 300, "namespaces the pods are spread over")
	fs.IntVar(&so.workers, "scale-workers", 48, "parallel pod creates")
	fs.DurationVar(&so.budget, "scale-budget", 6*time.Minute, "time allowed for creating the pods; the report says when it ran out")
	benchtime := fs.String("benchtime", "1s", "go test -benchtime")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	skipped := map[string]string{}
	for _, ph := range strings.Split(*skip, ",") {
		switch ph = strings.TrimSpace(ph); ph {
		case "":
		case "load", "scale", "gobench":
			skipped[ph] = "left out with -skip " + ph
		default:
			fmt.Fprintf(os.Stderr, "bench: -skip: unknown phase %q (load, scale, gobench)\n", ph)
			return 2
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	outPath, err := filepath.Abs(*out)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 2
	}
	if err := toCheckoutRoot(); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 1
	}
	if err := prerequisites(skipped); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 1
	}
	begin := time.Now()
	rep := &report{machine: describeMachine(), skipped: skipped}
	if err := runPhases(ctx, rep, lo, so, *benchtime); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 1
	}
	rep.took = time.Since(begin)
	var buf bytes.Buffer
	rep.write(&buf)
	tmp := outPath + ".tmp"
	if err := os.WriteFile(tmp, buf.Bytes(), 0o644); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 1
	}
	if err := os.Rename(tmp, outPath); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 1
	}
	logf("wrote %s in %v", outPath, rep.took.Round(time.Second))
	return 0
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// runPhases runs the load and identity-scale phases, each on its own
// sandbox (closed before the next starts, so they never share CPUs), then
// the Go benchmarks.
func runPhases(ctx context.Context, rep *report, lo loadOptions, so scaleOptions, benchtime string) error {
	_, noLoad := rep.skipped["load"]
	_, noScale := rep.skipped["scale"]
	var binDir string
	if !noLoad || !noScale {
		dir, err := os.MkdirTemp("", "metaguard-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		logf("building metaguard with its symbol table")
		if binDir, err = prepareBinaries(ctx, dir); err != nil {
			return err
		}
		rep.machine.metaguard = strings.TrimPrefix(firstLine(exec.Command(filepath.Join(binDir, "metaguard"), "version").Output()), "metaguard ")
	}
	withSandbox := func(name string, f func(s *sandbox.Sandbox) error) error {
		logf("%s: starting a sandbox", name)
		s, err := sandbox.Start(ctx, sandbox.Options{BinDir: binDir, Logf: func(string, ...any) {}})
		if err != nil {
			return err
		}
		ferr := f(s)
		if ferr != nil {
			if h := s.Healthy(); h != nil {
				ferr = errors.Join(ferr, h)
			}
			logf("%s failed; the sandbox's logs were in %s", name, s.ArtifactDir())
		}
		return errors.Join(ferr, s.Close())
	}
	if !noLoad {
		err := withSandbox("load", func(s *sandbox.Sandbox) error {
			res, err := runLoad(ctx, s, lo, logf)
			rep.load = res
			return err
		})
		if err != nil {
			return fmt.Errorf("load phase: %w", err)
		}
	}
	if !noScale {
		err := withSandbox("scale", func(s *sandbox.Sandbox) error {
			res, err := runScale(ctx, s, so, logf)
			rep.scale = res
			return err
		})
		if err != nil {
			return fmt.Errorf("identity-scale phase: %w", err)
		}
	}
	if _, skip := rep.skipped["gobench"]; !skip {
		res, err := runGoBench(ctx, benchtime, logf)
		if err != nil {
			return err
		}
		rep.gobench = res
	}
	return nil
}

// toCheckoutRoot moves to the top of the metaguard checkout: deploy/base,
// ./cmd/metaguard and the benchmark packages are named from there.
func toCheckoutRoot() error {
	wd, err := os.Getwd()
	if err != nil {
		return err
	}
	for d := wd; ; d = filepath.Dir(d) {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil && bytes.HasPrefix(b, []byte("module metaguard.dev/metaguard\n")) {
			return os.Chdir(d)
		}
		if filepath.Dir(d) == d {
			return fmt.Errorf("run inside a metaguard checkout (no go.mod of metaguard.dev/metaguard above %s)", wd)
		}
	}
}

// lookTool finds a program in PATH or in the sbin directories, where
// Debian puts nginx and which a non-login PATH may lack.
func lookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found", name)
}

// prerequisites says everything that is missing at once, with the command
// that installs it.
func prerequisites(skipped map[string]string) error {
	var missing []string
	_, noLoad := skipped["load"]
	_, noScale := skipped["scale"]
	if !noLoad || !noScale {
		// metaguard is built by the benchmark itself (prepareBinaries).
		if err := sandbox.CheckPrerequisites(sandbox.Options{}); err != nil {
			missing = append(missing, err.Error())
		}
	}
	var pkgs []string
	if !noLoad {
		for _, t := range [][2]string{{"wrk", "wrk"}, {"nginx", "nginx-light"}} {
			if _, err := lookTool(t[0]); err != nil {
				pkgs = append(pkgs, t[1])
			}
		}
	}
	if !noScale {
		if _, err := lookTool("ss"); err != nil {
			pkgs = append(pkgs, "iproute2")
		}
	}
	if len(pkgs) > 0 {
		missing = append(missing, fmt.Sprintf("%s: apt-get install -y %s", strings.Join(pkgs, ", "), strings.Join(pkgs, " ")))
	}
	if len(missing) > 0 {
		return fmt.Errorf("cannot run the benchmark here:\n  %s", strings.Join(missing, "\n  "))
	}
	return nil
}

// machineInfo is the report's first table.
type machineInfo struct {
	date, cpu, kernel, os             string
	cores                             int
	memGiB                            float64
	loadAtStart                       string
	goVersion, metaguard, gitDescribe string
	nginx, wrk, apiserver, mock, perf string
}

func describeMachine() machineInfo {
	m := machineInfo{
		date:        time.Now().UTC().Format("2006-01-02 15:04 UTC"),
		cores:       runtime.NumCPU(),
		loadAtStart: loadAverage(),
		cpu:         "unknown",
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	m.kernel = firstLine(os.ReadFile("/proc/sys/kernel/osrelease"))
	if b, err := os.ReadFile("/etc/os-release"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "PRETTY_NAME="); ok {
				m.os = strings.Trim(v, `"`)
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "MemTotal:"); ok {
				kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
				m.memGiB = kb / (1 << 20)
			}
		}
	}
	m.goVersion = firstLine(exec.Command("go", "env", "GOVERSION").Output())
	m.metaguard = "not built (no sandbox phase ran)"
	m.gitDescribe = describeCheckout(context.Background())
	m.apiserver = strings.TrimPrefix(firstLine(exec.Command("bin/kube-apiserver", "--version").Output()), "Kubernetes ")
	m.mock = firstLine(exec.Command("bin/ec2-metadata-mock", "--version").Output())
	if p, err := lookTool("nginx"); err == nil {
		// nginx -v prints to stderr.
		m.nginx = strings.TrimPrefix(firstLine(exec.Command(p, "-v").CombinedOutput()), "nginx version: ")
	}
	if p, err := lookTool("wrk"); err == nil {
		m.wrk, _, _ = strings.Cut(firstLine(exec.Command(p, "-v").CombinedOutput()), " [")
	}
	if p, err := lookTool("perf"); err == nil {
		m.perf = firstLine(exec.Command(p, "--version").Output())
	} else {
		m.perf = "not installed"
	}
	return m
}

func firstLine(b []byte, err error) string {
	if err != nil && len(b) == 0 {
		return "unknown"
	}
	l, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	return strings.TrimSpace(l)
}
