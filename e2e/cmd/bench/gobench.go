package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
)

// goBenchPackages are the packages whose Go benchmarks the report shows:
// decision, identity lookup, the proxy package's own (canonicalisation,
// stripping, when it has them), and this command's black-box ones.
var goBenchPackages = []string{"./proxy/policy", "./identity/podindex", "./proxy", "./e2e/cmd/bench"}

// goBench is one benchmark result line.
type goBench struct {
	pkg         string
	name        string // without the -GOMAXPROCS suffix
	nsPerOp     float64
	bytesPerOp  int64
	allocsPerOp int64
}

// goBenchResult is the Go benchmarks' outcome.
type goBenchResult struct {
	benchtime string
	results   []goBench
	// withoutBenchmarks are packages that have none.
	withoutBenchmarks []string
}

func runGoBench(ctx context.Context, benchtime string, logf func(string, ...any)) (*goBenchResult, error) {
	args := append([]string{"test", "-run", "^$", "-bench", ".", "-benchmem", "-count", "1", "-benchtime", benchtime}, goBenchPackages...)
	logf("go %s", strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, "go", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go test -bench: %w\n%s%s", err, out, stderr.Bytes())
	}
	res := &goBenchResult{benchtime: benchtime}
	res.results, res.withoutBenchmarks = parseGoBench(out)
	return res, nil
}

var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+\d+\s+([0-9.]+) ns/op(?:\s+([0-9.]+) B/op\s+([0-9.]+) allocs/op)?`)

// parseGoBench reads go test -bench output: "pkg:" lines name the package
// of the benchmark lines after them; "ok pkg" with no benchmark line since
// the last package means the package has none ("no test files" likewise).
func parseGoBench(out []byte) (results []goBench, without []string) {
	pkg := ""
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimSpace(v)
			continue
		}
		f := strings.Fields(line)
		if len(f) >= 2 && (f[0] == "ok" || f[0] == "?") {
			if !seen[f[1]] {
				without = append(without, f[1])
			}
			continue
		}
		m := benchLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		b := goBench{pkg: pkg, name: m[1]}
		b.nsPerOp, _ = strconv.ParseFloat(m[2], 64)
		if m[3] != "" {
			bb, _ := strconv.ParseFloat(m[3], 64)
			a, _ := strconv.ParseFloat(m[4], 64)
			b.bytesPerOp, b.allocsPerOp = int64(bb), int64(a)
		}
		seen[pkg] = true
		results = append(results, b)
	}
	return results, without
}

// find returns the first benchmark whose name starts with prefix.
func (r *goBenchResult) find(prefix string) (goBench, bool) {
	if r == nil {
		return goBench{}, false
	}
	for _, b := range r.results {
		if strings.HasPrefix(b.name, prefix) {
			return b, true
		}
	}
	return goBench{}, false
}
