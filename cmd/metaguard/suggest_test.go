package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"metaguard.dev/metaguard/proxy/audit"
)

// suggestLog is a small audit log as the proxy writes it under the design
// policy: node-facts use, a credential read the accessors rule granted, a
// credential read the policy refused, a path the upstream did not serve, a
// line of the daemon's own log (kubectl logs mixes them) and a line that
// is not JSON.
func suggestLog(t *testing.T) []byte {
	t.Helper()
	web := audit.Record{SrcIP: netip.MustParseAddr("10.0.0.7"), Pod: "web-1", Namespace: "shop", PodUID: "u1",
		ServiceAccount: "web", Labels: map[string]string{"app": "web"}, Endpoint: "aws", Method: "GET"}
	agent := audit.Record{SrcIP: netip.MustParseAddr("10.0.0.8"), Pod: "agent-x", Namespace: "ops", PodUID: "u2",
		ServiceAccount: "agent", Labels: map[string]string{"role": "metadata-accessor"}, Endpoint: "aws", Method: "GET"}
	at := func(r audit.Record, sec int, method, path string, d audit.Decision, rule string, reason audit.Reason, status int) audit.Record {
		r.Time = time.Date(2025, 1, 1, 0, 0, sec, 0, time.UTC)
		if method != "" {
			r.Method = method
		}
		r.Path, r.Decision, r.Rule, r.Reason, r.Status, r.Bytes = path, d, rule, reason, status, 9
		return r
	}
	var b bytes.Buffer
	w, err := audit.NewWriter(&b, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []audit.Record{
		at(web, 0, "PUT", "/latest/api/token", audit.DecisionAllow, "node-facts", audit.ReasonAllowed, 200),
		at(web, 1, "", "/latest/meta-data/placement/region", audit.DecisionAllow, "node-facts", audit.ReasonAllowed, 200),
		at(agent, 2, "", "/latest/meta-data/iam/security-credentials/node-role", audit.DecisionAllow, "accessors", audit.ReasonCredentialsAllowed, 200),
		at(web, 3, "", "/latest/user-data", audit.DecisionDeny, "", audit.ReasonNotAllowed, 403),
		at(agent, 4, "", "/latest/meta-data/made-up", audit.DecisionAllow, "accessors", audit.ReasonAllowed, 404),
	} {
		w.Write(context.Background(), &r)
	}
	b.WriteString(`{"time":"2025-01-01T00:00:05Z","level":"INFO","msg":"policy loaded"}` + "\n")
	b.WriteString("panic: not even JSON\n")
	return b.Bytes()
}

func TestSuggestCommand(t *testing.T) {
	dir := t.TempDir()
	plain := filepath.Join(dir, "audit.log")
	zipped := filepath.Join(dir, "audit.log.1.gz")
	if err := os.WriteFile(plain, suggestLog(t), 0o600); err != nil {
		t.Fatal(err)
	}
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	zw.Write(suggestLog(t))
	zw.Close()
	if err := os.WriteFile(zipped, z.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}

	azure := filepath.Join(dir, "azure.yaml")
	azureLog := filepath.Join(dir, "azure.log")
	if err := os.WriteFile(azure, []byte("apiVersion: metaguard.dev/v1alpha1\nkind: Policy\nmode: audit\nendpoints: [{name: azure, address: \"169.254.169.254:80\", flavor: azure}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// What an older proxy logged: a token forwarded only because of audit mode.
	var azureLine bytes.Buffer
	aw, err := audit.NewWriter(&azureLine, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	aw.Write(context.Background(), &audit.Record{Pod: "b-1", Namespace: "pay", ServiceAccount: "b", Labels: map[string]string{"app": "billing"},
		Endpoint: "azure", Method: "GET", Path: "/metadata/identity/oauth2/token", QueryKeys: []string{"api-version", "client_id", "resource"},
		Decision: audit.DecisionAuditDeny, Reason: audit.ReasonNoRule, Status: 200})
	if err := os.WriteFile(azureLog, azureLine.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name   string
		args   []string
		code   int
		stdout []string
		stderr []string
	}{
		{"a credential read only audit mode forwarded is listed for review, not learned", []string{"suggest", "--config", azure, azureLog},
			exitOK, []string{"rules: []", "# group pay-billing: pods labelled app=billing in namespace pay", "GET /metadata/identity/oauth2/token by pod b-1"},
			[]string{"review: group pay-billing (pods labelled app=billing in namespace pay): 1 credential request on 1 path by pod b-1 not granted; listed at the end of the policy; --grant-credentials=pay-billing grants them"}},
		{"a group the operator grants gets its reviewed paths, and a token chosen by query is flagged", []string{"suggest", "--config", azure, "--grant-credentials", "pay-billing", azureLog},
			exitOK, []string{"name: pay-billing-credentials", "granted by --grant-credentials"},
			[]string{"granted: group pay-billing", "review: rule pay-billing-credentials: /metadata/identity/oauth2/token chooses an identity by client_id; pin it with query: before enforcing"}},
		{"granting a group that has nothing to review is an error naming those that do", []string{"suggest", "--config", azure, "--grant-credentials", "pay-billin", azureLog},
			exitError, nil, []string{`group "pay-billin" has no credential requests to review; groups that do: pay-billing`}},
		{"suggest prints a policy and a summary", []string{"suggest", "--config", designPolicy, "--audit-log", plain},
			exitOK, []string{"mode: enforce", "name: shop-web", "/latest/api/token", "name: ops-sa-agent-credentials", "credentials: allow",
				"/latest/meta-data/iam/security-credentials/node-role # by pod agent-x", "# group shop-web"},
			[]string{"read 7 lines from 1 audit log: 3 used; skipped 1 for review (credential requests not granted), 1 not served, 1 of other logs, 1 malformed\n",
				"first malformed line: " + plain + ":7: audit line: invalid character", "2 pod groups, 2 rules, 1 with credentials: allow",
				"review: group shop-web (pods labelled app=web in namespace shop): 1 credential request on 1 path by pod web-1 not granted"}},
		{"suggest reads gzip logs given as arguments too", []string{"suggest", "--config", designPolicy, "--mode", "audit", "--audit-log", plain, zipped},
			exitOK, []string{"mode: audit", "name: shop-web"}, []string{"read 14 lines from 2 audit logs: 6 used"}},
		{"suggest without a log is a usage error", []string{"suggest", "--config", designPolicy}, exitUsage, nil, []string{"at least one --audit-log"}},
		{"a bad group-by is a usage error", []string{"suggest", "--config", designPolicy, "--group-by", "pod", plain}, exitUsage, nil, []string{"--group-by"}},
		{"a negative threshold is a usage error", []string{"suggest", "--config", designPolicy, "--collapse-threshold", "-1", plain}, exitUsage, nil, []string{"--collapse-threshold"}},
		{"a bad mode is a usage error", []string{"suggest", "--config", designPolicy, "--mode", "loud", plain}, exitUsage, nil, []string{"--mode"}},
		{"a missing log is a runtime error", []string{"suggest", "--config", designPolicy, filepath.Join(dir, "nope")}, exitError, nil, []string{"opening audit log"}},
		{"a missing policy is a runtime error", []string{"suggest", "--config", filepath.Join(dir, "nope"), plain}, exitError, nil, []string{"reading policy"}},
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

// TestSuggestOutputValidates is the round trip an operator makes: the
// suggested policy, saved to a file, passes validate.
func TestSuggestOutputValidates(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "audit.log")
	if err := os.WriteFile(log, suggestLog(t), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ name, groupBy, grant string }{
		{"the policy suggested grouping by label=app validates", "label=app", ""},
		{"the policy suggested grouping by serviceaccount validates", "serviceaccount", ""},
		{"the policy suggested grouping by namespace validates", "namespace", ""},
		{"the policy with a reviewed group's credentials granted validates", "label=app", "shop-web"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := []string{"suggest", "--config", designPolicy, "--group-by", tt.groupBy, "--audit-log", log}
			if tt.grant != "" {
				args = append(args, "--grant-credentials", tt.grant)
			}
			var stdout, stderr bytes.Buffer
			if code := run(args, &stdout, &stderr); code != exitOK {
				t.Fatalf("suggest exit %d: %s", code, stderr.String())
			}
			out := filepath.Join(dir, tt.groupBy+tt.grant+".yaml")
			if err := os.WriteFile(out, stdout.Bytes(), 0o600); err != nil {
				t.Fatal(err)
			}
			stdout.Reset()
			stderr.Reset()
			if code := run([]string{"validate", "--config", out}, &stdout, &stderr); code != exitOK {
				t.Fatalf("validate exit %d: %s\n%s", code, stderr.String(), out)
			}
			if !strings.Contains(stdout.String(), "valid (mode enforce, defaultAction deny, 2 endpoints") {
				t.Errorf("validate said %q", stdout.String())
			}
		})
	}
}
