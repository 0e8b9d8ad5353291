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
	"strings"
	"syscall"
	"time"

	"metaguard.dev/metaguard/e2e/sandbox"
)

func main() { os.Exit(run()) }

// options shape a run.
type options struct {
	out              string
	duration, warmup time.Duration
	rounds, conns    int
	baseline         string // a git revision to measure beside the checkout
	tables           string // comma-separated table keys to run; empty: all
	variant          string // Go runtime env (GOMAXPROCS=1 ...) of an extra metaguard row
	profile, trace   bool
	goBench          bool
	benchtime        string
}

func run() int {
	var o options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.StringVar(&o.out, "out", "BENCHMARKS.md", "where the report goes")
	fs.DurationVar(&o.duration, "duration", 6*time.Second, "length of one measured wrk run")
	fs.DurationVar(&o.warmup, "warmup", time.Second, "wrk warm-up before each measured run")
	fs.IntVar(&o.rounds, "rounds", 3, "rounds of every row; tables show medians")
	fs.IntVar(&o.conns, "connections", 16, "concurrent connections of the saturating tables, spread over the load pods")
	fs.StringVar(&o.baseline, "baseline", "", "a git revision of metaguard to measure beside the checkout (rows marked baseline)")
	fs.StringVar(&o.variant, "variant", "", "space-separated GO* settings (GOMAXPROCS=1 GOGC=200) for an extra row of the checkout's build in place of the DaemonSet's")
	fs.StringVar(&o.tables, "tables", "", "only these tables, comma-separated (fast, mock, close, one); fast is always run")
	fs.BoolVar(&o.profile, "profile", true, "profile metaguard with perf during one extra run")
	fs.BoolVar(&o.trace, "trace", true, "trace metaguard with runtime/trace during one extra run, for the tail")
	fs.BoolVar(&o.goBench, "gobench", true, "run the Go benchmarks")
	fs.StringVar(&o.benchtime, "benchtime", "1s", "go test -benchtime")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	if o.conns%loadPods != 0 || o.conns < loadPods {
		fmt.Fprintf(os.Stderr, "bench: -connections must be a multiple of the %d load pods\n", loadPods)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := bench(ctx, o); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 1
	}
	return 0
}

func bench(ctx context.Context, o options) error {
	outPath, err := filepath.Abs(o.out)
	if err != nil {
		return err
	}
	if err := toCheckoutRoot(); err != nil {
		return err
	}
	if err := prerequisites(); err != nil {
		return err
	}
	begin := time.Now()
	rep := &report{machine: describeMachine(), opts: o}
	dir, err := os.MkdirTemp("", "metaguard-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	logf("building metaguard")
	bins, err := buildMetaguards(ctx, dir, o.baseline)
	if err != nil {
		return err
	}
	rep.machine.metaguard = bins.version
	logf("starting a sandbox")
	s, err := sandbox.Start(ctx, sandbox.Options{BinDir: bins.dir, Logf: func(string, ...any) {}})
	if err != nil {
		return err
	}
	rep.load, err = runLoad(ctx, s, bins, o)
	if err != nil {
		err = errors.Join(err, s.Healthy())
		logf("the load phase failed; the sandbox's logs were in %s", s.ArtifactDir())
	}
	if err = errors.Join(err, s.Close()); err != nil {
		return err
	}
	if o.goBench {
		if rep.gobench, err = runGoBench(ctx, o.benchtime); err != nil {
			return err
		}
	}
	rep.took = time.Since(begin)
	var buf bytes.Buffer
	rep.write(&buf)
	if err := os.WriteFile(outPath+".tmp", buf.Bytes(), 0o644); err != nil {
		return err
	}
	logf("wrote %s in %v", outPath, rep.took.Round(time.Second))
	return os.Rename(outPath+".tmp", outPath)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// binaries are the metaguard builds of one run, in the bin directory the
// sandbox starts from: "metaguard" there is a link to the build the
// current session runs, so a session switches builds without the sandbox
// knowing.
type binaries struct {
	dir               string
	version           string // of the checkout's build
	current, traced   string
	baseline, baseRev string // empty without -baseline
}

// use points the sandbox's metaguard at one of the builds.
func (b *binaries) use(path string) error {
	link := filepath.Join(b.dir, "metaguard")
	tmp := link + ".next"
	os.Remove(tmp)
	if err := os.Symlink(path, tmp); err != nil {
		return err
	}
	return os.Rename(tmp, link)
}

// traceHook is the file the traced build adds to package main: the
// runtime's tracer writes to $METAGUARD_BENCH_TRACE from SIGUSR1 to
// SIGUSR2, and then the file is complete.
const traceHook = `package main

import ("os"; "os/signal"; "runtime/trace"; "syscall")

func init() {
	path := os.Getenv("METAGUARD_BENCH_TRACE")
	if path == "" {
		return
	}
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGUSR1, syscall.SIGUSR2)
	go func() {
		var f *os.File
		for s := range sig {
			if s == syscall.SIGUSR1 && f == nil {
				f, _ = os.Create(path + ".part")
				_ = trace.Start(f)
			} else if s == syscall.SIGUSR2 && f != nil {
				trace.Stop()
				f.Close()
				f = nil
				_ = os.Rename(path+".part", path)
			}
		}
	}()
}
`

// buildMetaguards builds, once for the whole run, the checkout as it is
// now, the same with the trace hook, and the baseline revision if asked.
// They keep their symbol tables (unlike bin/metaguard's -s -w) so perf can
// name functions; that changes nothing at run time. Every row of one kind
// runs the same build, so a checkout that changes during the run never
// mixes versions in one report.
func buildMetaguards(ctx context.Context, dir, baseline string) (*binaries, error) {
	b := &binaries{dir: filepath.Join(dir, "bin"), version: describeCheckout(ctx)}
	if err := os.MkdirAll(b.dir, 0o700); err != nil {
		return nil, err
	}
	for _, name := range []string{"etcd", "kube-apiserver", "ec2-metadata-mock", "fakecloud", "podclient"} {
		src, err := filepath.Abs(filepath.Join("bin", name))
		if err != nil {
			return nil, err
		}
		if err := os.Symlink(src, filepath.Join(b.dir, name)); err != nil {
			return nil, err
		}
	}
	b.current, b.traced = filepath.Join(dir, "metaguard.current"), filepath.Join(dir, "metaguard.traced")
	if err := goBuild(ctx, ".", b.current, b.version); err != nil {
		return nil, err
	}
	hook, overlay := filepath.Join(dir, "tracehook.go"), filepath.Join(dir, "overlay.json")
	target, _ := filepath.Abs("cmd/metaguard/zz_bench_tracehook.go")
	if err := os.WriteFile(hook, []byte(traceHook), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(overlay, fmt.Appendf(nil, `{"Replace":{%q:%q}}`, target, hook), 0o600); err != nil {
		return nil, err
	}
	if err := goBuild(ctx, ".", b.traced, b.version+"+tracehook", "-overlay", overlay); err != nil {
		return nil, err
	}
	if baseline != "" {
		src := filepath.Join(dir, "baseline")
		out, err := exec.CommandContext(ctx, "sh", "-c", `mkdir -p "$1" && git archive "$2" | tar -x -C "$1" && git rev-parse --short "$2"`, "sh", src, baseline).Output()
		if err != nil {
			return nil, fmt.Errorf("checking out the baseline %s: %w", baseline, err)
		}
		b.baseRev, b.baseline = strings.TrimSpace(string(out)), filepath.Join(dir, "metaguard.baseline")
		if err := goBuild(ctx, src, b.baseline, b.baseRev); err != nil {
			return nil, err
		}
	}
	return b, b.use(b.current)
}

func goBuild(ctx context.Context, dir, out, version string, extra ...string) error {
	args := append([]string{"build", "-trimpath", "-ldflags", "-X main.version=" + version, "-o", out}, extra...)
	cmd := exec.CommandContext(ctx, "go", append(args, "./cmd/metaguard")...)
	cmd.Dir, cmd.Env = dir, append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building metaguard in %s: %w: %s", dir, err, b)
	}
	return nil
}

// describeCheckout is git describe --dirty, marked when product code has
// files git does not track yet: they are built in, and --dirty misses them.
func describeCheckout(ctx context.Context) string {
	out, err := exec.CommandContext(ctx, "git", "describe", "--tags", "--always", "--dirty").Output()
	if err != nil {
		return "dev"
	}
	v := strings.TrimSpace(string(out))
	untracked, err := exec.CommandContext(ctx, "git", "ls-files", "--others", "--exclude-standard", "--", "cmd", "proxy", "identity", "redirect").Output()
	if err == nil && len(bytes.TrimSpace(untracked)) > 0 {
		v += "+untracked"
	}
	return v
}

// toCheckoutRoot moves to the top of the metaguard checkout: deploy/base,
// ./cmd/metaguard and bin/ are named from there.
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

// lookTool finds a program in PATH or in the sbin directories, where Debian
// puts nginx and which a non-login PATH may lack.
func lookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		if p := filepath.Join(d, name); isExecutable(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found", name)
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

// prerequisites says everything that is missing at once, with the command
// that installs it.
func prerequisites() error {
	var missing, pkgs []string
	if err := sandbox.CheckPrerequisites(sandbox.Options{}); err != nil {
		missing = append(missing, err.Error())
	}
	for _, t := range [][2]string{{"wrk", "wrk"}, {"nginx", "nginx-light"}, {"perf", "linux-perf"}} {
		if _, err := lookTool(t[0]); err != nil {
			pkgs = append(pkgs, t[1])
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
	date, cpu, kernel, os, loadAtStart string
	cores                              int
	memGiB                             float64
	goVersion, metaguard, gitDescribe  string
	nginx, wrk, mock, perf             string
}

func describeMachine() machineInfo {
	m := machineInfo{
		date: time.Now().UTC().Format("2006-01-02 15:04 UTC"), cores: runtime.NumCPU(), loadAtStart: loadAverage(),
		cpu:         procField("/proc/cpuinfo", "model name", ":"),
		os:          strings.Trim(procField("/etc/os-release", "PRETTY_NAME", "="), `"`),
		kernel:      firstLine(os.ReadFile("/proc/sys/kernel/osrelease")),
		goVersion:   firstLine(exec.Command("go", "env", "GOVERSION").Output()),
		gitDescribe: describeCheckout(context.Background()),
		mock:        firstLine(exec.Command("bin/ec2-metadata-mock", "--version").Output()),
	}
	var kb float64
	fmt.Sscanf(procField("/proc/meminfo", "MemTotal", ":"), "%f", &kb)
	m.memGiB = kb / (1 << 20)
	tool := func(name string, args ...string) string {
		p, err := lookTool(name)
		if err != nil {
			return "not installed"
		}
		return firstLine(exec.Command(p, args...).CombinedOutput())
	}
	m.nginx = strings.TrimPrefix(tool("nginx", "-v"), "nginx version: ")
	m.wrk, _, _ = strings.Cut(tool("wrk", "-v"), " [")
	m.perf = tool("perf", "--version")
	return m
}

// procField is the value of the first "key<sep>value" line of a file.
func procField(path, key, sep string) string {
	b, _ := os.ReadFile(path)
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, sep); ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

func firstLine(b []byte, err error) string {
	if err != nil && len(b) == 0 {
		return "unknown"
	}
	l, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	return strings.TrimSpace(l)
}
