package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestExplainExpect(t *testing.T) {
	accessor := []string{"--namespace", "ops", "--labels", "role=metadata-accessor", "--namespace-labels", "metaguard.dev/accessors=true"}
	tests := []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"a matching allow exits 0", append([]string{"--expect", "allow", "--labels", "app=web"}, "GET", "/latest/meta-data/placement/"), exitOK, ""},
		{"a matching deny exits 0", []string{"--expect", "deny", "--endpoint", "aws-v6", "GET", "/latest/user-data"}, exitOK, ""},
		{"a matching credential allow exits 0", append(append([]string{"--expect", "allow"}, accessor...), "GET", "/latest/meta-data/iam/security-credentials/r"), exitOK, ""},
		{"an allow expected but denied exits 1 and names both", []string{"--expect", "allow", "--endpoint", "aws-v6", "GET", "/latest/user-data"}, exitError, "expected allow, got deny by (no rule)"},
		{"a deny expected but allowed exits 1 and names the rule", append(append([]string{"--expect", "deny"}, accessor...), "GET", "/latest/meta-data/iam/security-credentials/r"), exitError, "expected deny, got allow by accessors"},
		{"a refusal before any rule is a deny", []string{"--expect", "deny", "GET", "/latest/meta-data/%2e%2e/"}, exitOK, ""},
		{"a refusal before any rule is not an allow", []string{"--expect", "allow", "GET", "/latest/meta-data/%2e%2e/"}, exitError, "expected allow, got refused with 400"},
		{"an unknown expectation is a usage error", []string{"--expect", "maybe", "GET", "/"}, exitUsage, "--expect must be allow, strip or deny"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			args := append([]string{"explain", "--config", designPolicy}, tt.args...)
			if code := run(args, &stdout, &stderr); code != tt.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.code, stdout.String(), stderr.String())
			}
			if !strings.Contains(stderr.String(), tt.stderr) {
				t.Errorf("stderr %q does not say %q", stderr.String(), tt.stderr)
			}
			if tt.code != exitUsage && !strings.Contains(stdout.String(), "decision:") {
				t.Errorf("the explanation is not printed: %q", stdout.String())
			}
		})
	}
}

func TestExplainExpectInAuditMode(t *testing.T) {
	// In audit mode a denial is forwarded as audit-deny: the policy still
	// denies it, so --expect deny holds, and --expect allow does not.
	for expect, code := range map[string]int{"deny": exitOK, "allow": exitError} {
		var stdout, stderr bytes.Buffer
		got := run([]string{"explain", "--config", "../../deploy/overlays/aws/policy.yaml", "--expect", expect,
			"--namespace", "shop", "--labels", "app=web", "GET", "/latest/meta-data/hostname"}, &stdout, &stderr)
		if got != code || !strings.Contains(stdout.String(), "decision:  audit-deny") {
			t.Errorf("--expect %s: exit %d, want %d\n%s%s", expect, got, code, stdout.String(), stderr.String())
		}
	}
}
