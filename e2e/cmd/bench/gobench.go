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
// decision, identity lookup, the proxy's stages, and this command's
// black-box ones.
var goBenchPackages = []string{"./proxy/policy", "./identity/podindex", "./proxy", "./e2e/cmd/bench"}

// goBench is one benchmark result line.
type goBench struct {
	pkg, name   string // name without the -GOMAXPROCS suffix
	nsPerOp     float64
	bytesPerOp  int64
	allocsPerOp int64
}

// goBenchResult is the Go benchmarks' outcome.
type goBenchResult struct {
	benchtime string
	results   []goBench
}

func runGoBench(ctx context.Context, benchtime string) (*goBenchResult, error) {
	args := append([]string{"test", "-run", "^$", "-bench", ".", "-benchmem", "-count", "1", "-benchtime", benchtime}, goBenchPackages...)
	logf("go %s", strings.Join(args, " "))
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go test -bench: %w\n%s%s", err, out, stderr.Bytes())
	}
	return &goBenchResult{benchtime: benchtime, results: parseGoBench(out)}, nil
}

var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+\d+\s+([0-9.]+) ns/op(?:\s+([0-9.]+) B/op\s+([0-9.]+) allocs/op)?`)

// parseGoBench reads go test -bench output: "pkg:" lines name the package
// of the benchmark lines after them.
func parseGoBench(out []byte) []goBench {
	var results []goBench
	pkg := ""
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "pkg: "); ok {
			pkg = strings.TrimSpace(v)
		} else if m := benchLine.FindStringSubmatch(sc.Text()); m != nil {
			b := goBench{pkg: pkg, name: m[1]}
			b.nsPerOp, _ = strconv.ParseFloat(m[2], 64)
			bb, _ := strconv.ParseFloat(m[3], 64)
			a, _ := strconv.ParseFloat(m[4], 64)
			b.bytesPerOp, b.allocsPerOp = int64(bb), int64(a)
			results = append(results, b)
		}
	}
	return results
}

// worst is the benchmark whose name starts with prefix that has the
// largest key (the first of equals).
func (r *goBenchResult) worst(prefix string, key func(goBench) float64) (goBench, bool) {
	var w goBench
	found := false
	for _, b := range r.safe() {
		if strings.HasPrefix(b.name, prefix) && (!found || key(b) > key(w)) {
			w, found = b, true
		}
	}
	return w, found
}

func (r *goBenchResult) safe() []goBench {
	if r == nil {
		return nil
	}
	return r.results
}
