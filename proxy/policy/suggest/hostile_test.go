package suggest

import (
	"bytes"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"

	"go.yaml.in/yaml/v3"

	"metaguard.dev/metaguard/proxy/policy"
)

// The hostile-log property: one pod of a group (mallory) runs during the
// audit window and sends whatever it likes: paths, methods, query keys,
// which the upstream serves or not. Every line is still the proxy's, decided
// by the policy in force. Whatever it sends, the suggestion gives no pod of
// any group a pattern, or a credential path, that the honest pods' log
// alone did not give, and the only new requests it allows are mallory's
// own served, literal, non-credential paths.

const hostileConfig = `apiVersion: metaguard.dev/v1alpha1
kind: Policy
mode: audit
endpoints:
  - {name: aws, address: "169.254.169.254:80", flavor: aws}
  - {name: gcp, address: "169.254.169.252:80", flavor: gcp}
  - {name: onprem, address: "192.168.100.21:32000", flavor: generic}
defaultAction: deny
rules:
  - name: web-role
    podSelector: {matchLabels: {app: web}}
    allow: [{paths: ["/latest/meta-data/iam/security-credentials/web-role"]}]
    credentials: allow
credentialPaths: ["/latest/user-data", "/v1/secrets/**"]
`

var (
	honest1 = pod{"web-1", "shop", "web", map[string]string{"app": "web"}}
	honest2 = pod{"web-2", "shop", "web", map[string]string{"app": "web"}}
	mallory = pod{"web-3", "shop", "web", map[string]string{"app": "web"}}
	// newcomer joins the group after the audit window.
	newcomer = pod{"web-4", "shop", "web", map[string]string{"app": "web"}}
	// neighbour is another group.
	neighbour = pod{"monitor-1", "shop", "monitor", map[string]string{"app": "monitor"}}
)

// hostileDirs and hostileLeaves are what mallory's paths are made of: real
// families, the credential class and its neighbours, generic paths.
var hostileDirs = []struct{ endpoint, dir string }{
	{"aws", "/latest/meta-data/placement/"},
	{"aws", "/latest/meta-data/network/interfaces/macs/0a:1b/"},
	{"aws", "/latest/meta-data/"},
	{"aws", "/latest/"},
	{"aws", "/2016-09-02/meta-data/"},
	{"aws", "/latest/meta-data/iam/security-credentials/"},
	{"aws", "/latest/meta-data/iam/"},
	{"aws", "/latest/meta-data/identity-credentials/ec2/security-credentials/"},
	{"gcp", "/computeMetadata/v1/instance/attributes/"},
	{"gcp", "/computeMetadata/v1/instance/service-accounts/default/"},
	{"gcp", "/computeMetadata/v1/instance/"},
	{"gcp", "/computeMetadata/v1/project/attributes/"},
	{"onprem", "/v1/config/"},
	{"onprem", "/v1/secrets/"},
	{"onprem", "/v1/"},
}

var hostileLeaves = []string{"p0", "p1", "p2", "p3", "p4", "p5", "region", "web-role", "other-role", "user-data",
	"token", "identity", "kube-env", "info", "", "x/y", "p1/", "p2/q"}

var hostileStatus = []int{200, 200, 200, 200, 404, 403, 502, 304, 206}

// honestCalls are what the honest pods (and mallory, innocently) did: a
// family two pods share, one only one pod used, credentials the policy
// grants.
func honestCalls() []call {
	var c []call
	for _, p := range []pod{honest1, honest2} {
		c = append(c, gets(p, "aws", expand("/latest/meta-data/placement", "p0", "p1", "p2", "p3")...)...)
		c = append(c, gets(p, "aws", "/latest/meta-data/iam/security-credentials/web-role", "/latest/meta-data/")...)
		c = append(c, gets(p, "onprem", expand("/v1/config", "a", "b", "c", "d")...)...)
		c = append(c, gets(p, "gcp", expand("/computeMetadata/v1/instance/attributes", "a", "b", "c", "d")...)...)
	}
	c = append(c, gets(honest1, "aws", expand("/latest/meta-data/network/interfaces/macs/0a:1b", "p0", "p1")...)...)
	c = append(c, gets(mallory, "aws", "/latest/meta-data/instance-id")...)
	c = append(c, gets(neighbour, "aws", "/latest/meta-data/instance-type")...)
	return c
}

// hostileCalls reads mallory's requests from choices, four bytes each, and
// drops any on a path another pod used: a path two pods used may make a
// pattern, and that is the rule, not a hole.
func hostileCalls(choices []byte, others map[[2]string]bool) []call {
	var out []call
	for len(choices) >= 4 {
		d := hostileDirs[int(choices[0])%len(hostileDirs)]
		leaf := hostileLeaves[int(choices[1])%len(hostileLeaves)]
		c := call{pod: mallory, endpoint: d.endpoint, method: "GET", path: d.dir + leaf, status: hostileStatus[int(choices[2])%len(hostileStatus)]}
		switch choices[3] % 5 {
		case 1:
			c.method = "HEAD"
		case 2:
			c.method = "PUT"
		case 3:
			if d.endpoint == "gcp" {
				c.queryKeys = []string{"recursive"}
			}
		case 4:
			c.oldProxy = true
		}
		choices = choices[4:]
		if others[[2]string{c.endpoint, c.path}] || policy.CanonicalPath(c.path) != "" {
			continue
		}
		if ep := mustEndpoint(c.endpoint); !ep.Serves(c.method, c.path) {
			continue // the proxy decides those itself; they never reach the policy
		}
		out = append(out, c)
	}
	return out
}

var hostilePolicy = func() *policy.Policy {
	p, err := policy.Parse("hostile", []byte(hostileConfig))
	if err != nil {
		panic(err)
	}
	return p
}()

func mustEndpoint(name string) *policy.Endpoint {
	ep, ok := hostilePolicy.EndpointByName(name)
	if !ok {
		panic(name)
	}
	return ep
}

var honest struct {
	once sync.Once
	sug  Suggestion
	pol  *policy.Policy
}

// honestSuggestion is the suggestion of the honest log, made once.
func honestSuggestion(t *testing.T) (Suggestion, *policy.Policy) {
	honest.once.Do(func() {
		_, honest.sug, honest.pol = suggestFrom(t, hostileConfig, labelBy("app"), logOf(t, hostilePolicy, honestCalls()))
	})
	if honest.pol == nil {
		t.Fatal("the honest log gave no suggestion")
	}
	return honest.sug, honest.pol
}

// checkHostile states the property for one set of mallory's requests.
func checkHostile(t *testing.T, choices []byte) {
	base := honestCalls()
	others := map[[2]string]bool{}
	for _, c := range base {
		if c.pod.name != mallory.name {
			others[[2]string{c.endpoint, c.path}] = true
		}
	}
	hostile := hostileCalls(choices, others)
	before, polBefore := honestSuggestion(t)
	_, after, polAfter := suggestFrom(t, hostileConfig, labelBy("app"), logOf(t, hostilePolicy, append(slices.Clone(base), hostile...)))

	if b, a := patterns(t, before.YAML), patterns(t, after.YAML); !slices.Equal(b, a) {
		t.Fatalf("mallory's requests changed the patterns from %v to %v\nrequests: %+v\n%s", b, a, hostile, after.YAML)
	}
	// What mallory may now have that it did not: its own served, literal,
	// non-credential paths.
	own := map[[3]string]bool{}
	for _, c := range hostile {
		ep := mustEndpoint(c.endpoint)
		if !ep.IsCredential(c.path) && wasServed(ep, c.status) {
			own[[3]string{c.endpoint, methodClass(c.method), c.path}] = true
		}
	}
	probes := append(slices.Clone(base), hostile...)
	for _, d := range hostileDirs {
		for _, leaf := range append(slices.Clone(hostileLeaves), "unseen", "p9", "a", "e") {
			for _, m := range []string{"GET", "PUT"} {
				probes = append(probes, call{endpoint: d.endpoint, method: m, path: d.dir + leaf})
			}
		}
	}
	for _, p := range []pod{honest1, honest2, mallory, newcomer, neighbour} {
		id := p.identity()
		for _, c := range probes {
			if policy.CanonicalPath(c.path) != "" {
				continue
			}
			req := func(pol *policy.Policy) policy.Request {
				ep, _ := pol.EndpointByName(c.endpoint)
				return policy.Request{Endpoint: ep, Method: c.method, Path: c.path}
			}
			was := polBefore.Decide(id, req(polBefore)).Action != policy.Deny
			now := polAfter.Decide(id, req(polAfter)).Action != policy.Deny
			if !now || was {
				continue
			}
			ep := mustEndpoint(c.endpoint)
			switch {
			case ep.IsCredential(c.path):
				t.Fatalf("mallory's requests gave %s the credential path %s %s on %s\nrequests: %+v\n%s", p.name, c.method, c.path, c.endpoint, hostile, after.YAML)
			case p.labels["app"] != "web":
				t.Fatalf("mallory's requests gave %s, of another group, %s %s on %s\n%s", p.name, c.method, c.path, c.endpoint, after.YAML)
			case !own[[3]string{c.endpoint, methodClass(c.method), c.path}]:
				t.Fatalf("mallory's requests gave %s %s %s on %s, which mallory was not served\nrequests: %+v\n%s", p.name, c.method, c.path, c.endpoint, hostile, after.YAML)
			}
		}
	}
}

func methodClass(m string) string {
	if m == "PUT" {
		return "PUT"
	}
	return "GET"
}

// patterns are the suggestion's collapsed paths, sorted.
func patterns(t *testing.T, doc []byte) []string {
	t.Helper()
	var d struct {
		Rules []struct {
			Allow []struct {
				Paths []string `yaml:"paths"`
			} `yaml:"allow"`
		} `yaml:"rules"`
	}
	if err := yaml.Unmarshal(doc, &d); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range d.Rules {
		for _, a := range r.Allow {
			for _, p := range a.Paths {
				if strings.Contains(p, "*") {
					out = append(out, p)
				}
			}
		}
	}
	slices.Sort(out)
	return out
}

func TestOnePodCannotWidenWhatItsGroupIsGranted(t *testing.T) {
	if b, _ := honestSuggestion(t); len(patterns(t, b.YAML)) == 0 {
		t.Fatalf("the honest log makes no pattern, so the property would hold vacuously:\n%s", b.YAML)
	}
	rounds := 300
	if testing.Short() || raceEnabled {
		rounds = 60
	}
	rng := rand.New(rand.NewPCG(12, 16))
	for range rounds {
		choices := make([]byte, 4*(1+rng.IntN(40)))
		for i := range choices {
			choices[i] = byte(rng.UintN(256))
		}
		checkHostile(t, choices)
	}
}

// FuzzOnePodCannotWidenWhatItsGroupIsGranted searches for a set of
// requests of one pod that breaks the property.
func FuzzOnePodCannotWidenWhatItsGroupIsGranted(f *testing.F) {
	f.Add(bytes.Repeat([]byte{0, 0, 0, 0, 0, 6, 0, 1, 0, 7, 0, 2, 12, 2, 0, 0}, 3))
	f.Add([]byte{5, 8, 0, 0, 5, 7, 0, 0, 13, 3, 0, 0, 9, 10, 0, 0, 8, 12, 0, 0})
	f.Fuzz(func(t *testing.T, choices []byte) {
		if len(choices) > 4*64 {
			return
		}
		checkHostile(t, choices)
	})
}
