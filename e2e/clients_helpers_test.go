//go:build e2e

package e2e

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"metaguard.dev/metaguard/e2e/fakecloud"
	"metaguard.dev/metaguard/e2e/sandbox"
	"metaguard.dev/metaguard/proxy/audit"
)

// Helpers for the tests that run the clouds' own client libraries in pods.

// clientEnv is what a client sees besides the pod's network: a HOME of its
// own (no credentials file of the machine's is found) and, for GCP, the
// resolv.conf of a GCE node, whose resolver is the metadata server. One
// second per DNS try keeps a silent resolver from stalling a test.
func clientEnv(t *testing.T) sandbox.ExecOptions {
	return sandbox.ExecOptions{
		Env: []string{"HOME=" + t.TempDir(), "GOOGLE_APPLICATION_CREDENTIALS=", "AWS_CONFIG_FILE=/dev/null",
			"AWS_SHARED_CREDENTIALS_FILE=/dev/null"},
		Files: map[string]string{
			"/etc/resolv.conf": "nameserver 169.254.169.254\noptions timeout:1 attempts:1\n",
			"/etc/hosts":       "127.0.0.1 localhost\n",
		},
	}
}

// plusEnv is o with more environment variables.
func plusEnv(o sandbox.ExecOptions, kv ...string) sandbox.ExecOptions {
	o.Env = append(append([]string(nil), o.Env...), kv...)
	return o
}

// client runs bin/podclient in the pod with opts.
func (n *node) client(pod *sandbox.Pod, opts sandbox.ExecOptions, args ...string) sandbox.PodClientResult {
	n.t.Helper()
	res, err := n.s.PodClientWith(n.ctx, pod, opts, args...)
	if err != nil {
		n.t.Fatalf("podclient %v in %s: %v", args, pod, err)
	}
	return res
}

// jsClient runs bin/jsclient in the pod with opts.
func (n *node) jsClient(pod *sandbox.Pod, opts sandbox.ExecOptions, args ...string) sandbox.PodClientResult {
	n.t.Helper()
	res, err := n.s.PodJSClient(n.ctx, pod, opts, args...)
	if err != nil {
		n.t.Fatalf("jsclient %v in %s: %v", args, pod, err)
	}
	return res
}

// auditOf returns the pod's audit lines written since t0. Lines are
// written in batches, so counting lines before a call would miss those
// still buffered; their time says when the request was answered.
func (n *node) auditOf(pod *sandbox.Pod, t0 time.Time) []audit.Record {
	n.t.Helper()
	var lines []audit.Record
	for _, l := range n.audit() {
		if l.Pod == pod.Name && l.Namespace == pod.Namespace && !l.Time.Before(t0) {
			lines = append(lines, l)
		}
	}
	return lines
}

// waitAuditOf waits until the pod has at least want audit lines since t0.
func (n *node) waitAuditOf(pod *sandbox.Pod, t0 time.Time, want int) []audit.Record {
	n.t.Helper()
	var lines []audit.Record
	eventually(n.t, 5*time.Second, func() bool {
		lines = n.auditOf(pod, t0)
		return len(lines) >= want
	})
	return lines
}

// summary is an audit trail as "METHOD path decision status" lines, for
// comparing and for failure messages.
func summary(lines []audit.Record) string {
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l.Method + " " + l.Path + " " + l.Decision.String() + " " + strconv.Itoa(l.Status) + "\n")
	}
	return b.String()
}

// waitParked waits until the fake upstream holds a request open (recorded
// without a status yet): a long-poll that arrived and waits.
func (n *node) waitParked(flavor fakecloud.Flavor) {
	n.t.Helper()
	eventually(n.t, 10*time.Second, func() bool {
		recs, err := n.s.CloudRecords(n.ctx, flavor)
		if err != nil {
			n.t.Fatal(err)
		}
		for _, r := range recs {
			if r.Status == 0 {
				return true
			}
		}
		return false
	})
}

// records returns what the fake upstream received since the last reset.
func (n *node) records(flavor fakecloud.Flavor) []fakecloud.Record {
	n.t.Helper()
	recs, err := n.s.CloudRecords(n.ctx, flavor)
	if err != nil {
		n.t.Fatal(err)
	}
	return recs
}

func (n *node) resetRecords(flavor fakecloud.Flavor) {
	n.t.Helper()
	if err := n.s.ResetCloudRecords(n.ctx, flavor); err != nil {
		n.t.Fatal(err)
	}
}

func (n *node) quirks(flavor fakecloud.Flavor, q fakecloud.Quirks) {
	n.t.Helper()
	if err := n.s.SetCloudQuirks(n.ctx, flavor, q); err != nil {
		n.t.Fatal(err)
	}
}
