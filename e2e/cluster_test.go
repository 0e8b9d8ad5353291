//go:build e2e

package e2e

import (
	"testing"

	"metaguard.dev/metaguard/e2e/sandbox"
)

// The cluster-wide case NetworkPolicies need one copy per namespace for:
// deny in every namespace, allow by namespaceSelector + podSelector, and
// a rule that selects by service account.
const clusterPolicy = `apiVersion: metaguard.dev/v1alpha1
kind: Policy
endpoints:
  - {name: aws, address: "169.254.169.254:80", flavor: aws}
defaultAction: deny
rules:
  - name: accessors
    podSelector: {matchLabels: {role: metadata-accessor}}
    namespaceSelector: {matchLabels: {metaguard.dev/accessors: "true"}}
    allow:
      - {methods: [GET, HEAD, PUT], paths: ["/**"]}
    credentials: allow
  - name: robots
    serviceAccounts: [shop/robot]
    allow:
      - paths: ["/latest/meta-data/instance-id"]
`

func TestClusterWideDefaultDeny(t *testing.T) {
	n := startNode(t, clusterPolicy)
	if err := n.s.EnsureNamespace(n.ctx, "ops", map[string]string{"metaguard.dev/accessors": "true"}); err != nil {
		t.Fatal(err)
	}
	accessor := n.addPod(sandbox.PodSpec{Namespace: "ops", Name: "agent", Labels: map[string]string{"role": "metadata-accessor"}})
	plainInOps := n.addPod(sandbox.PodSpec{Namespace: "ops", Name: "plain"})
	accessorElsewhere := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "agent", Labels: map[string]string{"role": "metadata-accessor"}})
	robot := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "robot", ServiceAccount: "robot"})
	fresh := n.addPod(sandbox.PodSpec{Namespace: "brand-new-team", Name: "app"})

	const id = "http://169.254.169.254/latest/meta-data/instance-id"
	const creds = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
	tests := []struct {
		name string
		pod  *sandbox.Pod
		url  string
		want int
	}{
		{"an accessor in an accessor namespace reads credentials", accessor, creds, 200},
		{"an unlabelled pod in that namespace is denied", plainInOps, id, 403},
		{"an accessor label in another namespace grants nothing", accessorElsewhere, creds, 403},
		{"the robot service account reads the instance id", robot, id, 200},
		{"the robot service account reads nothing else", robot, creds, 403},
		{"a namespace created after the policy is denied too", fresh, id, 403},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if r := n.get(tt.pod, tt.url, nil); r.status != tt.want {
				t.Fatalf("status %d (%q), want %d", r.status, r.body, tt.want)
			}
		})
	}
}
