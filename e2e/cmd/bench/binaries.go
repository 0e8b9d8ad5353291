package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// sandboxBinaries are what the sandbox starts besides metaguard; make
// builds them into bin/.
var sandboxBinaries = []string{"etcd", "kube-apiserver", "ec2-metadata-mock", "fakecloud", "podclient"}

// prepareBinaries builds metaguard once for the whole run, from the
// checkout as it is now, and makes a bin directory of it and links to the
// checkout's other binaries. Every metaguard row, the profile and the
// scale phase run this one build, so the report never mixes two versions
// of the code (other work may change the checkout during a long run). It
// keeps its symbol table, unlike bin/metaguard (-s -w), so perf can name
// functions; that changes nothing at run time. It returns the directory
// and the version the binary reports.
func prepareBinaries(ctx context.Context, dir string) (string, error) {
	binDir := filepath.Join(dir, "bin")
	if err := os.MkdirAll(binDir, 0o700); err != nil {
		return "", err
	}
	for _, b := range sandboxBinaries {
		src, err := filepath.Abs(filepath.Join("bin", b))
		if err != nil {
			return "", err
		}
		if err := os.Symlink(src, filepath.Join(binDir, b)); err != nil && !errors.Is(err, os.ErrExist) {
			return "", err
		}
	}
	version := describeCheckout(ctx)
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-X main.version="+version,
		"-o", filepath.Join(binDir, "metaguard"), "./cmd/metaguard")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building metaguard: %w: %s", err, out)
	}
	return binDir, nil
}

// describeCheckout is git describe --dirty, plus a mark when product code
// has files git does not track yet: they are built in, and --dirty does
// not see them.
func describeCheckout(ctx context.Context) string {
	out, err := exec.CommandContext(ctx, "git", "describe", "--tags", "--always", "--dirty").Output()
	if err != nil {
		return "dev"
	}
	v := strings.TrimSpace(string(out))
	untracked, err := exec.CommandContext(ctx, "git", "ls-files", "--others", "--exclude-standard", "--",
		"cmd", "proxy", "identity", "redirect").Output()
	if err == nil && len(bytes.TrimSpace(untracked)) > 0 {
		v += "+untracked"
	}
	return v
}
