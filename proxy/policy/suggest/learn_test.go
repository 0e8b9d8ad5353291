package suggest

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"metaguard.dev/metaguard/proxy/audit"
	"metaguard.dev/metaguard/proxy/policy"
)

// learnConfig is an audit-mode policy with one rule that grants a
// credential, a generic endpoint and GCP beside AWS.
const learnConfig = `apiVersion: metaguard.dev/v1alpha1
kind: Policy
mode: audit
endpoints:
  - {name: aws, address: "169.254.169.254:80", flavor: aws}
  - {name: gcp, address: "169.254.169.252:80", flavor: gcp}
  - {name: onprem, address: "192.168.100.21:32000", flavor: generic}
defaultAction: deny
rules:
  - name: accessors
    podSelector: {matchLabels: {app: agent}}
    allow: [{paths: ["/latest/meta-data/iam/security-credentials/**"]}]
    credentials: allow
  - name: readers
    podSelector: {matchLabels: {app: web}}
    allow: [{paths: ["/latest/meta-data/iam/**"]}]
    credentials: strip
credentialPaths: ["/latest/user-data", "/v1/secrets/**"]
`

var (
	agent1 = pod{"agent-1", "ops", "agent", map[string]string{"app": "agent"}}
	// stray has no label any rule selects.
	stray = pod{"stray-1", "shop", "stray", map[string]string{"app": "stray"}}
	webs  = []pod{
		{"web-a", "shop", "web", map[string]string{"app": "web"}},
		{"web-b", "shop", "web", map[string]string{"app": "web"}},
		{"web-c", "shop", "web", map[string]string{"app": "web"}},
		{"web-d", "shop", "web", map[string]string{"app": "web"}},
		{"web-e", "shop", "web", map[string]string{"app": "web"}},
	}
)

// check is something the suggested policy must do: allow or deny a request
// of a pod.
type check struct {
	pod      pod
	endpoint string
	method   string
	path     string
	allowed  bool
}

func get(p pod, endpoint, path string, allowed bool) check {
	return check{p, endpoint, "GET", path, allowed}
}

// TestSuggestCannotBeTaughtByThePodItJudges has a row for each way a pod
// running during the audit window could write its own policy, and checks
// the suggestion does not let it.
func TestSuggestCannotBeTaughtByThePodItJudges(t *testing.T) {
	in := mustParse(t, learnConfig)
	const role = "/latest/meta-data/iam/security-credentials/node-role"
	placement := expand("/latest/meta-data/placement", "availability-zone", "region", "group-name", "partition-number", "host-id")
	// A line an older proxy wrote: a credential read forwarded only
	// because of audit mode.
	forwardedByAudit := func(p pod, path string) []byte {
		return writeLog(t, audit.Record{Pod: p.name, Namespace: p.namespace, ServiceAccount: p.sa, Labels: p.labels,
			Endpoint: "aws", Method: "GET", Path: path, Decision: audit.DecisionAuditDeny, Reason: audit.ReasonNoRule, Status: 200})
	}
	tests := []struct {
		name   string
		opts   Options
		log    []byte
		checks []check
		has    []string // in the YAML
		hasNot []string
		// review names the groups listed for review, granted or not.
		review []string
	}{
		{
			name: "a path the upstream answered 404 is not learned",
			log: logOf(t, in, []call{
				{pod: webs[0], endpoint: "aws", method: "GET", path: "/latest/meta-data/made-up", status: 404},
				{pod: webs[0], endpoint: "aws", method: "GET", path: "/latest/meta-data/instance-id"},
			}),
			checks: []check{get(webs[0], "aws", "/latest/meta-data/made-up", false), get(webs[0], "aws", "/latest/meta-data/instance-id", true)},
		},
		{
			name: "a path the upstream refused or failed on is not learned",
			log: logOf(t, in, []call{
				{pod: webs[0], endpoint: "aws", method: "GET", path: "/latest/meta-data/tags/instance/x", status: 403},
				{pod: webs[0], endpoint: "aws", method: "GET", path: "/latest/meta-data/events/x", status: 502},
				{pod: webs[0], endpoint: "onprem", method: "GET", path: "/v1/status", status: 500},
			}),
			checks: []check{get(webs[0], "aws", "/latest/meta-data/tags/instance/x", false), get(webs[0], "aws", "/latest/meta-data/events/x", false),
				get(webs[0], "onprem", "/v1/status", false)},
		},
		{
			name: "a 304 is served on GCP, where clients wait for changes, and nowhere else",
			log: logOf(t, in, []call{
				{pod: webs[0], endpoint: "gcp", method: "GET", path: "/computeMetadata/v1/instance/attributes/ssh-keys", queryKeys: []string{"wait_for_change"}, status: 304},
				{pod: webs[0], endpoint: "aws", method: "GET", path: "/latest/meta-data/hostname", status: 304},
			}),
			checks: []check{get(webs[0], "gcp", "/computeMetadata/v1/instance/attributes/ssh-keys", true), get(webs[0], "aws", "/latest/meta-data/hostname", false)},
		},
		{
			name: "a credential read the policy in force granted is carried forward, literally",
			log:  logOf(t, in, gets(agent1, "aws", role)),
			checks: []check{get(agent1, "aws", role, true), get(agent1, "aws", "/latest/meta-data/iam/security-credentials/other-role", false),
				get(webs[0], "aws", role, false)},
			has: []string{"- name: ops-agent-credentials", "\n    credentials: allow\n", role + " # by pod agent-1", "GET " + role + " by pod agent-1: the policy in force granted it"},
		},
		{
			name:   "a credential read the policy in force granted but the upstream did not serve is not carried forward",
			log:    logOf(t, in, []call{{pod: agent1, endpoint: "aws", method: "GET", path: "/latest/meta-data/iam/security-credentials/guessed", status: 404}}),
			checks: []check{get(agent1, "aws", "/latest/meta-data/iam/security-credentials/guessed", false)},
			hasNot: []string{"\n    credentials: allow\n"},
		},
		{
			name:   "a credential request audit mode refused is listed for review with its pods, counts and times, not granted",
			log:    logOf(t, in, append(gets(webs[0], "aws", role, role), gets(webs[1], "aws", role)...)),
			checks: []check{get(webs[0], "aws", role, false), get(webs[1], "aws", role, false)},
			has: []string{"# Needs review: credential requests that were not learned.", "# group shop-web: pods labelled app=web in namespace shop",
				"#   3 credential requests on 1 path by pods web-a, web-b, 2025-01-01T00:00:00Z to 2025-01-01T00:00:02Z",
				"#     GET " + role + " by pods web-a, web-b: 3 requests (deny credential-path)", "--grant-credentials=GROUP"},
			hasNot: []string{"\n    credentials: allow\n"},
			review: []string{"shop-web"},
		},
		{
			name:   "a credential read forwarded only because of audit mode is listed for review, not granted",
			log:    forwardedByAudit(webs[0], role),
			checks: []check{get(webs[0], "aws", role, false)},
			has:    []string{"GET " + role + " by pod web-a: 1 request (audit-deny no-rule-selects-pod)"},
			hasNot: []string{"\n    credentials: allow\n"},
			review: []string{"shop-web"},
		},
		{
			name: "a credentials-allowed line naming no rule that grants them in the policy in force is not carried forward",
			log: writeLog(t,
				audit.Record{Pod: webs[0].name, Namespace: "shop", ServiceAccount: "web", Labels: webs[0].labels, Endpoint: "aws", Method: "GET",
					Path: role, Decision: audit.DecisionAllow, Rule: "readers", Reason: audit.ReasonCredentialsAllowed, Status: 200},
				audit.Record{Pod: webs[1].name, Namespace: "shop", ServiceAccount: "web", Labels: webs[1].labels, Endpoint: "aws", Method: "GET",
					Path: role, Decision: audit.DecisionAllow, Rule: "", Reason: audit.ReasonCredentialsAllowed, Status: 200},
				audit.Record{Pod: webs[2].name, Namespace: "shop", ServiceAccount: "web", Labels: webs[2].labels, Endpoint: "aws", Method: "GET",
					Path: role, Decision: audit.DecisionAllow, Rule: "removed-since", Reason: audit.ReasonCredentialsAllowed, Status: 200}),
			checks: []check{get(webs[0], "aws", role, false)},
			hasNot: []string{"\n    credentials: allow\n"},
			review: []string{"shop-web"},
		},
		{
			name: "a pod no rule selected never gets a credentials rule from its probes",
			log: bytes.Join([][]byte{
				logOf(t, in, append(gets(stray, "aws", role, "/latest/user-data", "/latest/meta-data/iam/info"), gets(stray, "onprem", "/v1/secrets/db")...)),
				forwardedByAudit(stray, role),
			}, nil),
			checks: []check{get(stray, "aws", role, false), get(stray, "aws", "/latest/user-data", false), get(stray, "onprem", "/v1/secrets/db", false)},
			hasNot: []string{"\n    credentials: allow\n"},
			review: []string{"shop-stray"},
		},
		{
			name: "a group the operator grants gets its reviewed paths, literally, and other groups nothing",
			opts: Options{GrantCredentials: []string{"shop-stray"}},
			log:  logOf(t, in, append(gets(stray, "aws", role), gets(webs[0], "aws", "/latest/user-data")...)),
			checks: []check{get(stray, "aws", role, true), get(stray, "aws", "/latest/meta-data/iam/security-credentials/other", false),
				get(webs[0], "aws", "/latest/user-data", false), get(webs[0], "aws", role, false)},
			has:    []string{"- name: shop-stray-credentials", "granted by --grant-credentials", "# group shop-web:"},
			hasNot: []string{"# group shop-stray:"},
			review: []string{"shop-stray", "shop-web"},
		},
		{
			name: "a family of paths one pod used stays literal",
			log:  logOf(t, in, gets(webs[0], "aws", placement...)),
			checks: []check{get(webs[0], "aws", placement[0], true), get(webs[1], "aws", placement[4], true),
				get(webs[0], "aws", "/latest/meta-data/placement/unseen", false)},
			hasNot: []string{"* # stands for"},
		},
		{
			name: "a family of paths two pods used becomes a pattern that says so and names them",
			log:  logOf(t, in, append(gets(webs[0], "aws", placement[:4]...), gets(webs[1], "aws", placement[:4]...)...)),
			checks: []check{get(webs[0], "aws", placement[0], true), get(webs[2], "aws", "/latest/meta-data/placement/unseen", true),
				get(webs[2], "aws", "/latest/meta-data/hostname", false)},
			has: []string{"/latest/meta-data/placement/* # stands for 4 used paths, by pods web-a, web-b",
				"was collapsed from siblings that two pods or more used;"},
		},
		{
			name: "a family of paths on a generic endpoint is never a pattern, however many pods used it",
			log: logOf(t, in, byEach(webs, func(p pod) []call {
				return gets(p, "onprem", expand("/v1/config", "a", "b", "c", "d", "e")...)
			})),
			checks: []check{get(webs[0], "onprem", "/v1/config/a", true), get(webs[0], "onprem", "/v1/config/unseen", false)},
			hasNot: []string{"* # stands for"},
		},
		{
			name: "every learned path names the pods that used it, not the first pod of the group",
			log: logOf(t, in, append(append(gets(webs[0], "aws", "/latest/meta-data/instance-id"), gets(webs[4], "aws", "/latest/meta-data/hostname")...),
				byEach(webs, func(p pod) []call { return gets(p, "aws", "/latest/meta-data/ami-id") })...)),
			has: []string{"/latest/meta-data/hostname # by pod web-e\n", "/latest/meta-data/instance-id # by pod web-a\n",
				"/latest/meta-data/ami-id # by pods web-a, web-b, web-c and 2 more\n",
				"# pods labelled app=web in namespace shop: 7 requests by pods web-a, web-b, web-c and 2 more"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := tt.opts
			opts.GroupBy = GroupBy{Kind: ByLabel, Label: "app"}
			opts.CollapseThreshold = DefaultCollapseThreshold
			_, sug, out := suggestFrom(t, learnConfig, opts, tt.log)
			for _, c := range tt.checks {
				ep, _ := out.EndpointByName(c.endpoint)
				d := out.Decide(c.pod.identity(), policy.Request{Endpoint: ep, Method: c.method, Path: c.path})
				if (d.Action != policy.Deny) != c.allowed {
					t.Errorf("%s %s %s on %s: %s (%s), want allowed=%v\n%s", c.pod.name, c.method, c.path, c.endpoint, d.Label(), d.Reason, c.allowed, sug.YAML)
				}
			}
			for _, s := range tt.has {
				if !bytes.Contains(sug.YAML, []byte(s)) {
					t.Errorf("output lacks %q:\n%s", s, sug.YAML)
				}
			}
			for _, s := range tt.hasNot {
				if bytes.Contains(sug.YAML, []byte(s)) {
					t.Errorf("output has %q:\n%s", s, sug.YAML)
				}
			}
			var review []string
			for _, r := range sug.Review {
				review = append(review, r.Group)
			}
			if fmt.Sprint(review) != fmt.Sprint(tt.review) && !(len(review) == 0 && len(tt.review) == 0) {
				t.Errorf("review %v, want %v", review, tt.review)
			}
		})
	}
}

func TestReviewIsBounded(t *testing.T) {
	in := mustParse(t, learnConfig)
	var probes []string
	for i := range maxReviewPaths + 40 {
		probes = append(probes, fmt.Sprintf("/latest/meta-data/iam/security-credentials/guess-%03d", i))
	}
	s, sug, _ := suggestFrom(t, learnConfig, labelBy("app"), logOf(t, in, gets(webs[0], "aws", probes...)))
	if s.stats.Review != maxReviewPaths || s.stats.OverBound != 40 {
		t.Errorf("counted %d for review and %d over the bound, want %d and 40: each line once", s.stats.Review, s.stats.OverBound, maxReviewPaths)
	}
	if n := strings.Count(string(sug.YAML), "/latest/meta-data/iam/security-credentials/guess-"); n != maxReviewPaths {
		t.Errorf("%d probed paths listed for review, want the %d kept", n, maxReviewPaths)
	}
	if !bytes.Contains(sug.YAML, []byte(fmt.Sprintf("and 40 requests on more paths than the %d kept per endpoint: never granted", maxReviewPaths))) {
		t.Errorf("the review does not say what it left out:\n%s", sug.YAML)
	}
}

// TestOneNameNeverStandsForTwoGroups: pods choose their labels, so a group
// can be named after the hashed name two colliding groups were given. Each
// group keeps its own name, and granting one grants only that group.
func TestOneNameNeverStandsForTwoGroups(t *testing.T) {
	in := mustParse(t, learnConfig)
	cred := "/latest/meta-data/iam/security-credentials/role"
	podWith := func(name, app string) pod {
		return pod{name: name, namespace: "shop", sa: "default", labels: map[string]string{"app": app}}
	}
	collide := []pod{podWith("web", "web"), podWith("web-upper", "WEB")}
	_, sug, _ := suggestFrom(t, learnConfig, labelBy("app"), logOf(t, in, byEach(collide, func(p pod) []call { return gets(p, "aws", cred) })))
	var hashed []string
	for _, r := range sug.Review {
		hashed = append(hashed, r.Group)
	}
	if len(hashed) != 2 || hashed[0] == hashed[1] || !strings.HasPrefix(hashed[0], "shop-web-") {
		t.Fatalf("colliding groups named %v, want two hashed shop-web names", hashed)
	}
	// A third group labelled with the hashed name's suffix, and one whose
	// rule names fall on the others' (shop-web-credentials).
	pods := append(collide, podWith("impostor", strings.TrimPrefix(hashed[0], "shop-")), podWith("cred-impostor", "web-credentials"))
	_, sug, _ = suggestFrom(t, learnConfig, labelBy("app"), logOf(t, in, byEach(pods, func(p pod) []call {
		return append(gets(p, "aws", cred), gets(p, "aws", "/latest/meta-data/instance-id")...)
	})))
	seen := map[string]bool{}
	for _, r := range sug.Review {
		if seen[r.Group] {
			t.Errorf("two groups are both called %s:\n%s", r.Group, sug.YAML)
		}
		seen[r.Group] = true
	}
	if len(seen) != len(pods) {
		t.Errorf("%d review groups for %d pods' groups: %v", len(seen), len(pods), sug.Review)
	}
}

// TestWritesAreLearnedWithTheirOwnMethods: GCP takes PUT and DELETE on
// guest attributes; a guest agent that uses both keeps both under the
// suggested policy, and nothing it did not use.
func TestWritesAreLearnedWithTheirOwnMethods(t *testing.T) {
	in := mustParse(t, learnConfig)
	agent := pod{name: "agent", namespace: "shop", sa: "default", labels: map[string]string{"app": "agent"}}
	attr := "/computeMetadata/v1/instance/guest-attributes/agent/state"
	calls := []call{
		{pod: agent, endpoint: "gcp", method: "PUT", path: attr},
		{pod: agent, endpoint: "gcp", method: "DELETE", path: attr},
		{pod: agent, endpoint: "gcp", method: "GET", path: "/computeMetadata/v1/instance/zone"},
	}
	s, _, out := suggestFrom(t, learnConfig, labelBy("app"), logOf(t, in, calls))
	if s.stats.Malformed != 0 {
		t.Errorf("%d lines taken as malformed", s.stats.Malformed)
	}
	ep, _ := out.EndpointByName("gcp")
	for _, tt := range []struct {
		method, path string
		allowed      bool
	}{
		{"PUT", attr, true},
		{"DELETE", attr, true},
		{"GET", "/computeMetadata/v1/instance/zone", true},
		{"DELETE", "/computeMetadata/v1/instance/guest-attributes/agent/other", false},
		{"PUT", "/computeMetadata/v1/instance/zone", false},
	} {
		d := out.Decide(agent.identity(), policy.Request{Endpoint: ep, Method: tt.method, Path: tt.path})
		if allowed := d.Forwarded() && !d.Audit; allowed != tt.allowed {
			t.Errorf("%s %s under the suggestion: %s, want allowed %v", tt.method, tt.path, d.Reason, tt.allowed)
		}
	}
}
