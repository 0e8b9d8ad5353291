// Command demo brings up a sandboxed node (real kube-apiserver and etcd,
// iptables rules in network namespaces, the AWS ec2-metadata-mock), runs
// metaguard on it, and walks three pods through allowed, stripped and
// denied requests, printing each request, its answer and its audit line.
// It tears everything down on exit, Ctrl-C included. Run it with
// `make demo` (root).
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"metaguard.dev/metaguard/e2e/sandbox"
)

const policy = `apiVersion: metaguard.dev/v1alpha1
kind: Policy
mode: enforce
endpoints:
  - {name: aws, address: "169.254.169.254:80", flavor: aws}
defaultAction: deny
rules:
  # Every pod in shop: an IMDSv2 session, the instance id, placement, and
  # the meta-data listing with credential entries stripped out.
  - name: node-facts
    namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: shop}}
    allow:
      - {methods: [PUT], paths: ["/latest/api/token"]}
      - paths: ["/latest/meta-data/", "/latest/meta-data/instance-id", "/latest/meta-data/placement/**"]
  # The one workload that may use the node's role.
  - name: accessors
    podSelector: {matchLabels: {role: metadata-accessor}}
    namespaceSelector: {matchLabels: {metaguard.dev/accessors: "true"}}
    allow:
      - {methods: [PUT], paths: ["/latest/api/token"]}
      - paths: ["/**"]
    credentials: allow
`

func main() { os.Exit(run()) }

func run() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	say("Starting a node sandbox: etcd + kube-apiserver (RBAC on), ec2-metadata-mock at 169.254.169.254, network namespaces...")
	s, err := sandbox.Start(ctx, sandbox.Options{Logf: func(f string, a ...any) { fmt.Printf("   "+f+"\n", a...) }})
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		return 1
	}
	defer func() {
		say("Tearing down: processes, network namespaces, temporary files.")
		if err := s.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "demo: cleanup: %v\n", err)
		}
	}()
	if err := tour(ctx, s); err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		return 1
	}
	return 0
}

func tour(ctx context.Context, s *sandbox.Sandbox) error {
	say("Applying deploy/base (namespace, ServiceAccount, ClusterRole, binding, DaemonSet) to the API server.")
	if err := s.ApplyManifests(ctx, "deploy/base"); err != nil {
		return err
	}
	if err := s.EnsureNamespace(ctx, "ops", map[string]string{"metaguard.dev/accessors": "true"}); err != nil {
		return err
	}
	pods := map[string]*sandbox.Pod{}
	for _, spec := range []sandbox.PodSpec{
		{Namespace: "ops", Name: "node-agent", Labels: map[string]string{"role": "metadata-accessor"}},
		{Namespace: "shop", Name: "web", Labels: map[string]string{"app": "web"}},
		{Namespace: "sandboxed", Name: "untrusted", Labels: map[string]string{"app": "ci-job"}},
	} {
		p, err := s.AddPod(ctx, spec)
		if err != nil {
			return err
		}
		pods[p.Name] = p
		fmt.Printf("   pod %-20s %-15s labels %v\n", p.String(), p.IP, spec.Labels)
	}

	policyFile := filepath.Join(s.ArtifactDir(), "policy.yaml")
	if err := os.WriteFile(policyFile, []byte(policy), 0o644); err != nil {
		return err
	}
	say("Starting metaguard in the node namespace as the metaguard ServiceAccount, with this policy:")
	fmt.Println(indent(policy))
	mg, err := s.StartMetaguard(ctx, "--config="+policyFile)
	if err != nil {
		return err
	}
	rules, _ := s.ExecInNode(ctx, "iptables-save")
	say("Its redirect rules in the node's kernel:")
	for _, l := range strings.Split(string(rules), "\n") {
		if strings.Contains(l, "METAGUARD") {
			fmt.Println("   " + l)
		}
	}

	steps := []struct {
		pod, path, note string
	}{
		{"node-agent", "/latest/meta-data/iam/security-credentials/", "an accessor lists the node's roles: allowed"},
		{"web", "/latest/meta-data/instance-id", "an ordinary pod reads the instance id: allowed"},
		{"web", "/latest/meta-data/", "the same pod lists meta-data: iam/ is stripped from the listing"},
		{"web", "/latest/meta-data/iam/security-credentials/", "and asks for the node's credentials: denied"},
		{"untrusted", "/latest/meta-data/instance-id", "a pod no rule selects: denied"},
		{"web", "/latest/meta-data/%2e%2e/iam/", "a path trick: refused before any rule"},
	}
	seen := 0
	for _, st := range steps {
		say(st.note)
		p := pods[st.pod]
		fmt.Printf("   %s$ curl http://169.254.169.254%s\n", p, st.path)
		status, body, err := get(ctx, s, p, st.path)
		if err != nil {
			return err
		}
		fmt.Printf("   -> %d %s\n", status, oneLine(body))
		if st.path == "/latest/meta-data/" {
			fmt.Printf("   (%d entries; \"iam/\" among them: %v)\n", strings.Count(strings.TrimSpace(body), "\n")+1, strings.Contains(body, "iam/"))
		}
		line, err := nextAudit(ctx, mg, &seen)
		if err != nil {
			return err
		}
		fmt.Printf("   audit: %s\n", line)
	}

	say("The real AWS SDK for Go v2 (IMDSv2: a token PUT, then GETs) inside the pods:")
	for _, name := range []string{"node-agent", "web"} {
		res, err := s.PodClient(ctx, pods[name], "aws-creds")
		if err != nil {
			return err
		}
		fmt.Printf("   %s: credentials ok=%v status=%d role=%q access_key_id=%q\n", pods[name], res.OK, res.Status, res.Role, res.AccessKeyID)
		for {
			if _, err := nextAudit(ctx, mg, &seen); err != nil {
				break
			}
		}
	}

	say("metaguard's counters (/metrics on the node):")
	resp, err := s.NodeHTTPClient().Get("http://127.0.0.1:9181/metrics")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if l := sc.Text(); strings.HasPrefix(l, "metaguard_requests_total") || strings.HasPrefix(l, "metaguard_pods_tracked") || strings.HasPrefix(l, "metaguard_identity_lookups_total") {
			fmt.Println("   " + l)
		}
	}
	say("Ask the policy without a cluster: metaguard explain --config policy.yaml --namespace shop GET /latest/meta-data/")
	return nil
}

func get(ctx context.Context, s *sandbox.Sandbox, p *sandbox.Pod, path string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://169.254.169.254"+path, nil)
	if err != nil {
		return 0, "", err
	}
	req.URL.Opaque = path // send the path exactly as written, tricks included
	resp, err := s.PodHTTPClient(p).Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// nextAudit waits for the audit line after the seen ones.
func nextAudit(ctx context.Context, mg *sandbox.Process, seen *int) (string, error) {
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		out, err := mg.Stdout()
		if err != nil {
			return "", err
		}
		lines := bytes.Split(bytes.TrimSpace(out), []byte("\n"))
		if len(out) > 0 && len(lines) > *seen {
			l := lines[*seen]
			*seen++
			var m map[string]any
			if json.Unmarshal(l, &m) == nil {
				delete(m, "time")
				delete(m, "pod_uid")
				b, _ := json.Marshal(m)
				return string(b), nil
			}
			return string(l), nil
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return "", fmt.Errorf("no new audit line")
}

func say(s string) { fmt.Printf("\n== %s\n", s) }

func oneLine(s string) string {
	s = strings.TrimSpace(strings.ReplaceAll(s, "\n", " | "))
	if len(s) > 110 {
		s = s[:110] + "..."
	}
	return s
}

func indent(s string) string {
	return "   " + strings.ReplaceAll(strings.TrimSpace(s), "\n", "\n   ")
}
