package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const designPolicy = "../../proxy/policy/testdata/design.yaml"

func TestCommandsExitCodesAndOutput(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("apiVersion: metaguard.dev/v1alpha1\nkind: Policy\nendpoints:\n  - {name: aws, address: nowhere, flavor: aws}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout []string
		stderr []string
	}{
		{"no command is a usage error", nil, exitUsage, nil, []string{"Usage:"}},
		{"an unknown command is a usage error", []string{"frobnicate"}, exitUsage, nil, []string{"unknown command"}},
		{"version prints the version", []string{"version"}, exitOK, []string{"metaguard dev"}, nil},
		{"validate accepts the design example", []string{"validate", "--config", designPolicy}, exitOK, []string{"valid (mode enforce"}, nil},
		{"validate refuses a bad policy with file and line", []string{"validate", "--config", bad}, exitError, nil, []string{bad + ":4: endpoints[0].address"}},
		{"validate of a missing file is a runtime error", []string{"validate", "--config", "/nonexistent"}, exitError, nil, []string{"reading policy"}},
		{"an unknown flag is a usage error", []string{"validate", "--nope"}, exitUsage, nil, []string{"flag provided but not defined"}},
		{"explain needs a method and a path", []string{"explain", "--config", designPolicy}, exitUsage, nil, []string{"explain needs METHOD and PATH"}},
		{"explain names the deciding rule", []string{"explain", "--config", designPolicy, "--namespace", "ops", "--labels", "role=metadata-accessor", "--namespace-labels", "metaguard.dev/accessors=true", "GET", "/latest/meta-data/iam/security-credentials/r"},
			exitOK, []string{"decision:  allow", "rule:      accessors", "reason:    credentials-allowed"}, nil},
		{"explain shows an allow by a rule", []string{"explain", "--config", designPolicy, "--labels", "app=web", "GET", "/latest/meta-data/placement/"},
			exitOK, []string{"decision:  allow", "rule:      node-facts"}, nil},
		{"explain shows a deny by no rule", []string{"explain", "--config", designPolicy, "--endpoint", "aws-v6", "GET", "/latest/user-data"},
			exitOK, []string{"decision:  deny", "rule:      (no rule)", "selecting: node-facts"}, nil},
		{"explain refuses a non-canonical path as the proxy does", []string{"explain", "--config", designPolicy, "GET", "/latest/meta-data/%2e%2e/"},
			exitOK, []string{"refused with 400"}, nil},
		{"explain of an unknown endpoint is a usage error", []string{"explain", "--config", designPolicy, "--endpoint", "nope", "GET", "/"}, exitUsage, nil, []string{"no endpoint \"nope\""}},
		{"run without a node name is a usage error", []string{"run", "--config", designPolicy, "--node-name", ""}, exitUsage, nil, []string{"--node-name"}},
		{"run without a host IP is a usage error", []string{"run", "--config", designPolicy, "--node-name", "n", "--host-ip", ""}, exitUsage, nil, []string{"--host-ip"}},
		{"run with a bad policy exits 1", []string{"run", "--config", bad, "--node-name", "n", "--iptables=false"}, exitError, nil, []string{"endpoints[0].address"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(tt.args, &stdout, &stderr); code != tt.code {
				t.Errorf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tt.code, stdout.String(), stderr.String())
			}
			for _, s := range tt.stdout {
				if !strings.Contains(stdout.String(), s) {
					t.Errorf("stdout lacks %q:\n%s", s, stdout.String())
				}
			}
			for _, s := range tt.stderr {
				if !strings.Contains(stderr.String(), s) {
					t.Errorf("stderr lacks %q:\n%s", s, stderr.String())
				}
			}
		})
	}
}
