package main

import (
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// suggestLog is a small audit log as the proxy writes it under the design
// policy: node-facts use, one credential read, a denial, a line of the
// daemon's own log (kubectl logs mixes them) and a line that is not JSON.
const suggestLog = `{"time":"2025-01-01T00:00:00Z","src_ip":"10.0.0.7","pod":"web-1","namespace":"shop","pod_uid":"u1","service_account":"web","labels":{"app":"web"},"endpoint":"aws","method":"PUT","path":"/latest/api/token","query_keys":[],"decision":"allow","rule":"node-facts","reason":"allowed","status":200,"bytes":56,"duration_ms":0.4}
{"time":"2025-01-01T00:00:01Z","src_ip":"10.0.0.7","pod":"web-1","namespace":"shop","pod_uid":"u1","service_account":"web","labels":{"app":"web"},"endpoint":"aws","method":"GET","path":"/latest/meta-data/placement/region","query_keys":[],"decision":"allow","rule":"node-facts","reason":"allowed","status":200,"bytes":9,"duration_ms":0.3}
{"time":"2025-01-01T00:00:02Z","src_ip":"10.0.0.8","pod":"agent-x","namespace":"ops","pod_uid":"u2","service_account":"agent","labels":{"role":"metadata-accessor"},"endpoint":"aws","method":"GET","path":"/latest/meta-data/iam/security-credentials/node-role","query_keys":[],"decision":"allow","rule":"accessors","reason":"credentials-allowed","status":200,"bytes":1200,"duration_ms":0.9}
{"time":"2025-01-01T00:00:03Z","src_ip":"10.0.0.7","pod":"web-1","namespace":"shop","pod_uid":"u1","service_account":"web","labels":{"app":"web"},"endpoint":"aws","method":"GET","path":"/latest/user-data","query_keys":[],"decision":"deny","rule":"","reason":"not-allowed-by-rules","status":403,"bytes":80,"duration_ms":0.1}
{"time":"2025-01-01T00:00:04Z","level":"INFO","msg":"policy loaded"}
panic: not even JSON
`

func TestSuggestCommand(t *testing.T) {
	dir := t.TempDir()
	plain := filepath.Join(dir, "audit.log")
	zipped := filepath.Join(dir, "audit.log.1.gz")
	if err := os.WriteFile(plain, []byte(suggestLog), 0o600); err != nil {
		t.Fatal(err)
	}
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	zw.Write([]byte(suggestLog))
	zw.Close()
	if err := os.WriteFile(zipped, z.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}

	azure := filepath.Join(dir, "azure.yaml")
	azureLog := filepath.Join(dir, "azure.log")
	if err := os.WriteFile(azure, []byte("apiVersion: metaguard.dev/v1alpha1\nkind: Policy\nmode: audit\nendpoints: [{name: azure, address: \"169.254.169.254:80\", flavor: azure}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(azureLog, []byte(`{"pod":"b-1","namespace":"pay","service_account":"b","labels":{"app":"billing"},"endpoint":"azure","method":"GET","path":"/metadata/identity/oauth2/token","query_keys":["api-version","client_id","resource"],"decision":"audit-deny","reason":"no-rule-selects-pod"}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name   string
		args   []string
		code   int
		stdout []string
		stderr []string
	}{
		{"suggest asks for review of a token chosen by query", []string{"suggest", "--config", azure, azureLog},
			exitOK, []string{"name: pay-billing-credentials"},
			[]string{"review: rule pay-billing-credentials: /metadata/identity/oauth2/token chooses an identity by client_id; pin it with query: before enforcing"}},
		{"suggest prints a policy and a summary", []string{"suggest", "--config", designPolicy, "--audit-log", plain},
			exitOK, []string{"mode: enforce", "name: shop-web", "/latest/api/token", "name: ops-sa-agent-credentials", "credentials: allow"},
			[]string{"read 6 lines from 1 audit log: 3 used; skipped 1 denied (never suggested), 1 of other logs, 1 malformed\n",
				"first malformed line: " + plain + ":6: not a JSON object", "2 pod groups, 2 rules, 1 with credentials: allow"}},
		{"suggest reads gzip logs given as arguments too", []string{"suggest", "--config", designPolicy, "--mode", "audit", "--audit-log", plain, zipped},
			exitOK, []string{"mode: audit", "name: shop-web"}, []string{"read 12 lines from 2 audit logs: 6 used"}},
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
	if err := os.WriteFile(log, []byte(suggestLog), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, groupBy := range []string{"label=app", "serviceaccount", "namespace"} {
		t.Run("the policy suggested grouping by "+groupBy+" validates", func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run([]string{"suggest", "--config", designPolicy, "--group-by", groupBy, "--audit-log", log}, &stdout, &stderr); code != exitOK {
				t.Fatalf("suggest exit %d: %s", code, stderr.String())
			}
			out := filepath.Join(dir, groupBy+".yaml")
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
