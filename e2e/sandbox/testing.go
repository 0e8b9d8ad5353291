package sandbox

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// StartT starts a sandbox for a test and registers its Close with
// t.Cleanup, so it runs after the test's own cleanups, also when the test
// fails or panics. A missing prerequisite fails the test: the e2e target
// is expected to have built everything (tests that should skip instead
// call CheckPrerequisites first).
//
// Logs go to e2e/artifacts/<test>-* in the checkout (git-ignored, and
// what CI uploads); they are removed when the test passes and kept, with
// the end of every process's stderr in the test log, when it fails.
func StartT(t testing.TB, opts Options) *Sandbox {
	t.Helper()
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	ownArtifacts := false
	if opts.ArtifactDir == "" {
		if top, err := checkoutRoot(); err == nil {
			root := filepath.Join(top, "e2e", "artifacts")
			if err := os.MkdirAll(root, 0o755); err == nil {
				dir, err := os.MkdirTemp(root, testDirName(t.Name())+"-")
				if err == nil {
					opts.ArtifactDir, ownArtifacts = dir, true
				}
			}
		}
	}
	s, err := Start(context.Background(), opts)
	if err != nil {
		if ownArtifacts {
			t.Logf("logs of the failed start are in %s", opts.ArtifactDir)
		}
		t.Fatalf("starting sandbox: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Healthy(); err != nil {
			t.Errorf("the sandbox broke during the test: %v", err)
		}
		failed := t.Failed()
		if failed {
			s.logTails(t)
		}
		if err := s.Close(); err != nil {
			t.Errorf("closing sandbox: %v", err)
		}
		if ownArtifacts && !failed && !opts.KeepArtifacts {
			os.RemoveAll(opts.ArtifactDir)
		}
	})
	return s
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)

func testDirName(name string) string {
	return strings.Trim(unsafeChars.ReplaceAllString(name, "_"), "_")
}

// logTails writes the end of every process's stderr to the test log.
func (s *Sandbox) logTails(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	procs := append([]*Process(nil), s.procs...)
	s.mu.Unlock()
	for _, p := range procs {
		if tail := p.tail(15); tail != "" {
			t.Logf("--- end of %s stderr (%s):\n%s", p.Name, p.StderrPath(), tail)
		}
	}
	t.Logf("sandbox logs kept in %s", s.artifacts)
}
