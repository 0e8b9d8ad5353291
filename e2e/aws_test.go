//go:build e2e

package e2e

import (
	"strings"
	"testing"

	"metaguard.dev/metaguard/e2e/sandbox"
)

const awsPolicy = `apiVersion: metaguard.dev/v1alpha1
kind: Policy
endpoints:
  - {name: aws, address: "169.254.169.254:80", flavor: aws}
  - {name: aws-v6, address: "[fd00:ec2::254]:80", flavor: aws}
  - {name: aws-v2only, address: "169.254.169.250:80", flavor: aws}
defaultAction: deny
rules:
  - name: node-facts
    podSelector: {matchLabels: {app: web}}
    allow:
      - {methods: [PUT], paths: ["/latest/api/token"]}
      - paths: ["/latest/meta-data/", "/latest/meta-data/instance-id", "/latest/meta-data/placement/**"]
  - name: accessors
    podSelector: {matchLabels: {role: metadata-accessor}}
    allow:
      - {methods: [PUT], paths: ["/latest/api/token"]}
      - paths: ["/**"]
    credentials: allow
`

// TestAWSWithTheRealSDK drives the AWS SDK for Go v2 IMDS client inside
// pod namespaces, through real DNAT rules, against ec2-metadata-mock.
func TestAWSWithTheRealSDK(t *testing.T) {
	n := startNode(t, awsPolicy)
	accessor := n.addPod(sandbox.PodSpec{Namespace: "ops", Name: "agent", Labels: map[string]string{"role": "metadata-accessor"}})
	web := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "web", Labels: map[string]string{"app": "web"}})
	batch := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "batch", Labels: map[string]string{"app": "batch"}})

	t.Run("an accessor gets the instance id and credentials over IMDSv2", func(t *testing.T) {
		if r := n.podClient(accessor, "aws-get", "instance-id"); !r.OK || r.Body == "" {
			t.Fatalf("instance-id: %+v", r)
		}
		r := n.podClient(accessor, "aws-creds")
		if !r.OK || r.AccessKeyID == "" || r.Role == "" {
			t.Fatalf("credentials: %+v", r)
		}
	})
	t.Run("a strip pod gets the instance id but never sees iam/ and is refused credentials", func(t *testing.T) {
		if r := n.podClient(web, "aws-get", "instance-id"); !r.OK || r.Body == "" {
			t.Fatalf("instance-id: %+v", r)
		}
		listing := n.get(web, "http://169.254.169.254/latest/meta-data/", nil)
		if listing.status != 200 || strings.Contains(listing.body, "iam") || !strings.Contains(listing.body, "instance-id") {
			t.Fatalf("listing: %d %q", listing.status, listing.body)
		}
		full := n.get(accessor, "http://169.254.169.254/latest/meta-data/", nil)
		if !strings.Contains(full.body, "iam/") {
			t.Fatalf("the accessor's listing lacks iam/, so this test proves nothing: %q", full.body)
		}
		if r := n.podClient(web, "aws-creds"); r.OK || r.Status != 403 {
			t.Fatalf("credentials for a strip pod: %+v, want 403", r)
		}
	})
	t.Run("an unselected pod gets 403", func(t *testing.T) {
		if r := n.podClient(batch, "aws-get", "instance-id"); r.OK || r.Status != 403 {
			t.Fatalf("%+v, want 403", r)
		}
	})
	t.Run("IMDSv2-only mode works through the proxy", func(t *testing.T) {
		v1 := n.get(web, "http://169.254.169.250/latest/meta-data/instance-id", nil)
		if v1.status != 401 {
			t.Fatalf("IMDSv1 GET against the -I mock: %d, want its 401 relayed", v1.status)
		}
		r := n.podClient(web, "-endpoint", "http://169.254.169.250", "aws-get", "instance-id")
		if !r.OK || r.Body == "" {
			t.Fatalf("SDK with a session token: %+v", r)
		}
	})
	t.Run("the IPv6 endpoint is guarded the same way", func(t *testing.T) {
		if r := n.podClient(accessor, "-endpoint", "http://[fd00:ec2::254]", "aws-get", "instance-id"); !r.OK {
			t.Fatalf("accessor over IPv6: %+v", r)
		}
		if r := n.podClient(batch, "-endpoint", "http://[fd00:ec2::254]", "aws-get", "instance-id"); r.OK || r.Status != 403 {
			t.Fatalf("unselected pod over IPv6: %+v, want 403", r)
		}
	})
	t.Run("other ports on the metadata address are dropped", func(t *testing.T) {
		client := n.s.PodHTTPClient(batch)
		client.Timeout = 2e9
		if resp, err := client.Get("http://169.254.169.254:8080/"); err == nil {
			resp.Body.Close()
			t.Fatalf("port 8080 on the metadata address answered %d; it must be dropped", resp.StatusCode)
		}
	})
}
