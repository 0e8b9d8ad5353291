package sandbox

import (
	"bytes"
	"context"
	"os"
	"testing"
)

func TestExecInPodWithMountsFilesOnlyForTheCommand(t *testing.T) {
	needNetnsPrivileges(t)
	name := unusedPrefix(t) + "-p9"
	scratchNetns(t, name)
	s := &Sandbox{dir: t.TempDir()}
	pod := &Pod{Namespace: "ns", Name: "p", Netns: name}
	before, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		t.Fatal(err)
	}
	const resolv = "nameserver 169.254.169.254\n"
	out, err := s.ExecInPodWith(context.Background(), pod, ExecOptions{
		Env:   []string{"E2E_PROBE=yes"},
		Files: map[string]string{"/etc/resolv.conf": resolv},
	}, "sh", "-c", `cat /etc/resolv.conf; echo "$E2E_PROBE"`)
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != resolv+"yes\n" {
		t.Errorf("the command saw %q", out)
	}
	after, err := os.ReadFile("/etc/resolv.conf")
	if err != nil || !bytes.Equal(before, after) {
		t.Errorf("the machine's /etc/resolv.conf changed: %q, %v", after, err)
	}
	if _, err := s.ExecInPodWith(context.Background(), pod, ExecOptions{Files: map[string]string{"etc/hosts": "x"}}, "true"); err == nil {
		t.Error("a relative path was accepted")
	}
}
