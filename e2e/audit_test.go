//go:build e2e

package e2e

import (
	"testing"

	"metaguard.dev/metaguard/e2e/sandbox"
	"metaguard.dev/metaguard/proxy/audit"
)

// TestAuditAndMetricsMatchWhatHappened sends a known mix of requests and
// checks the audit log and the counters agree with it, request for
// request, and that no secret reaches the log.
func TestAuditAndMetricsMatchWhatHappened(t *testing.T) {
	n := startNode(t, awsPolicy)
	web := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "web", Labels: map[string]string{"app": "web"}, ServiceAccount: "web-sa"})
	accessor := n.addPod(sandbox.PodSpec{Namespace: "ops", Name: "agent", Labels: map[string]string{"role": "metadata-accessor"}})
	before := n.metrics()

	type req struct {
		pod      *sandbox.Pod
		path     string
		status   int
		decision audit.Decision
		reason   audit.Reason
	}
	reqs := []req{
		{web, "/latest/meta-data/instance-id", 200, audit.DecisionAllow, audit.ReasonAllowed},
		{web, "/latest/meta-data/", 200, audit.DecisionStrip, audit.ReasonCredentialsHidden},
		{web, "/latest/meta-data/iam/info", 403, audit.DecisionDeny, audit.ReasonNotAllowed},
		{web, "/latest/meta-data/hostname", 403, audit.DecisionDeny, audit.ReasonNotAllowed},
		{web, "/latest/meta-data/%2e%2e/x", 400, audit.DecisionDeny, audit.ReasonMalformed},
		{accessor, "/latest/meta-data/iam/security-credentials/", 200, audit.DecisionAllow, audit.ReasonCredentialsAllowed},
	}
	var role string
	for _, r := range reqs {
		got := n.get(r.pod, "http://169.254.169.254"+r.path, nil)
		if got.status != r.status {
			t.Fatalf("%s %s: %d, want %d", r.pod, r.path, got.status, r.status)
		}
		if r.pod == accessor {
			role = got.body
		}
	}
	creds := n.get(accessor, "http://169.254.169.254/latest/meta-data/iam/security-credentials/"+role, nil)
	if creds.status != 200 || !contains(creds.body, "SecretAccessKey") {
		t.Fatalf("credentials: %d %q", creds.status, creds.body)
	}

	lines := n.waitAudit(len(reqs) + 1)
	if len(lines) != len(reqs)+1 {
		t.Fatalf("%d audit lines for %d requests", len(lines), len(reqs)+1)
	}
	for i, r := range reqs {
		l := lines[i]
		if l.Decision != r.decision || l.Reason != r.reason || l.Status != r.status || l.Endpoint != "aws" || l.Method != "GET" {
			t.Errorf("line %d = %+v, want %s/%s/%d", i, l, r.decision, r.reason, r.status)
		}
		if l.Namespace != r.pod.Namespace || l.Pod != r.pod.Name || l.SrcIP != r.pod.IP || l.PodUID != string(r.pod.UID) {
			t.Errorf("line %d names %s/%s %s %s, want %s %s %s", i, l.Namespace, l.Pod, l.SrcIP, l.PodUID, r.pod, r.pod.IP, r.pod.UID)
		}
	}
	if lines[0].ServiceAccount != "web-sa" || lines[0].Labels["app"] != "web" {
		t.Errorf("identity fields: %+v", lines[0])
	}
	if lines[1].Bytes == 0 {
		t.Errorf("bytes of a stripped listing are 0")
	}
	out, _ := n.mg.Stdout()
	for _, secret := range []string{"SecretAccessKey", "AccessKeyId", "Token\"", "Expiration"} {
		if contains(string(out), secret) {
			t.Errorf("the audit log holds %q", secret)
		}
	}

	after := n.metrics()
	for _, c := range []struct {
		decision, code string
		want           float64
	}{{"allow", "200", 3}, {"strip", "200", 1}, {"deny", "403", 2}, {"deny", "400", 1}} {
		labels := map[string]string{"endpoint": "aws", "decision": c.decision, "code": c.code}
		got := metric(after, "metaguard_requests_total", labels) - metric(before, "metaguard_requests_total", labels)
		if got != c.want {
			t.Errorf("requests_total%v grew by %v, want %v", labels, got, c.want)
		}
	}
	if got := metric(after, "metaguard_request_duration_seconds", map[string]string{"endpoint": "aws"}) - metric(before, "metaguard_request_duration_seconds", map[string]string{"endpoint": "aws"}); got != 7 {
		t.Errorf("request_duration_seconds observed %v requests, want 7", got)
	}
	if got := metric(after, "metaguard_pods_tracked", nil); got != 2 {
		t.Errorf("pods_tracked = %v, want 2", got)
	}
	if got := metric(after, "metaguard_policy_info", map[string]string{"generation": "1", "mode": "enforce"}); got != 1 {
		t.Errorf("policy_info{generation=1,mode=enforce} = %v", got)
	}
	if got := metric(after, "metaguard_redirect_syncs_total", map[string]string{"result": "ok"}); got < 1 {
		t.Errorf("redirect_syncs_total{ok} = %v", got)
	}
}
