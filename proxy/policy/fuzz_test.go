package policy

import (
	"errors"
	"net/url"
	"os"
	"path"
	"reflect"
	"strings"
	"testing"

	"metaguard.dev/metaguard/identity"
)

// builtInCredential is one path of each flavor's built-in credential
// class: no policy, whatever it says, may take these out of the class.
var builtInCredential = map[Flavor][]string{
	FlavorAWS: {
		"/latest/meta-data/iam/security-credentials/node-role",
		"/2016-09-02/meta-data/iam/info",
		"/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance",
	},
	FlavorGCP: {
		"/computeMetadata/v1/instance/service-accounts/default/token",
		"/computeMetadata/v1/instance/service-accounts/default/identity",
		"/computeMetadata/v1/instance/attributes/kube-env",
		"/computeMetadata/v1beta1/instance/service-accounts/default/token",
		"/0.1/meta-data/service-accounts/default/acquire",
	},
	FlavorAzure: {"/metadata/identity/oauth2/token"},
}

// FuzzParse: whatever the document, Parse never panics, returns either a
// policy or a *ValidationError (never both, never half a policy), returns
// the same for the same input, and a policy it returns has only valid,
// distinct, addressable endpoints whose built-in credential class is
// intact and never opened by defaultAction alone.
func FuzzParse(f *testing.F) {
	design, err := os.ReadFile("testdata/design.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(string(design))
	f.Add(decidePolicy)
	f.Fuzz(func(t *testing.T, doc string) {
		p, err := Parse("fuzz.yaml", []byte(doc))
		p2, err2 := Parse("fuzz.yaml", []byte(doc))
		if (err == nil) != (err2 == nil) {
			t.Fatalf("Parse is not deterministic: %v, then %v", err, err2)
		}
		if err != nil {
			var ve *ValidationError
			if p != nil || !errors.As(err, &ve) || len(ve.Problems) == 0 {
				t.Fatalf("failed Parse returned policy %v and error %T %v: want nil and a *ValidationError with problems", p, err, err)
			}
			if err.Error() != err2.Error() {
				t.Fatalf("Parse is not deterministic:\n%v\nthen\n%v", err, err2)
			}
			return
		}
		if !reflect.DeepEqual(summary(p), summary(p2)) {
			t.Fatalf("Parse is not deterministic: %v, then %v", summary(p), summary(p2))
		}
		if len(p.Endpoints()) == 0 {
			t.Fatal("a policy without endpoints was accepted")
		}
		names := map[string]bool{}
		for _, e := range p.Endpoints() {
			if !nameRE.MatchString(e.Name) || names[e.Name] {
				t.Fatalf("endpoint name %q is invalid or duplicate", e.Name)
			}
			names[e.Name] = true
			if !e.Addr.IsValid() || e.Addr.Port() == 0 || e.Addr.Addr().Zone() != "" || e.Addr.Addr().Is4In6() {
				t.Fatalf("endpoint %s has address %v", e.Name, e.Addr)
			}
			if got, ok := p.EndpointFor(e.Addr); !ok || got != e {
				t.Fatalf("EndpointFor(%v) does not find endpoint %s", e.Addr, e.Name)
			}
			if _, ok := flavors[e.Flavor]; !ok {
				t.Fatalf("endpoint %s has flavor %q", e.Name, e.Flavor)
			}
			if len(e.spec.methods) == 0 {
				t.Fatalf("endpoint %s serves no method", e.Name)
			}
			for _, c := range builtInCredential[e.Flavor] {
				if !e.IsCredential(c) {
					t.Fatalf("endpoint %s (%s): %s is not a credential path", e.Name, e.Flavor, c)
				}
				// A pod no rule selects gets defaultAction, which never
				// opens the credential class.
				d := p.Decide(identity.Identity{Namespace: "fuzz-unselected-ns", Name: "p", ServiceAccount: "fuzz-unselected-sa",
					Labels: map[string]string{"fuzz.metaguard.dev/unselected": "x"}}, Request{Endpoint: e, Method: "GET", Path: c})
				if d.Action == Allow && d.Rule == "" {
					t.Fatalf("endpoint %s: %s allowed without a rule: %+v", e.Name, c, d)
				}
			}
		}
		if rl := p.RateLimit; rl.RequestsPerSecond < 0 || (rl.RequestsPerSecond > 0 && rl.Burst < 1) {
			t.Fatalf("rate limit %+v", rl)
		}
	})
}

// summary is what two parses of one document must agree on.
func summary(p *Policy) []string {
	out := []string{string(p.Mode), p.DefaultAction.String(), strings.Join(p.RuleNames(), ",")}
	for _, e := range p.Endpoints() {
		out = append(out, e.Name+"="+e.Addr.String()+"/"+string(e.Flavor))
	}
	return out
}

// FuzzCanonicalPath: a path CanonicalPath accepts is exactly the bytes Go
// puts on the wire for it (the forwarder builds url.URL{Path: path}), has
// nothing path.Clean would change but a trailing slash, and a literal
// pattern of it matches it. So what the policy matched is what is sent.
func FuzzCanonicalPath(f *testing.F) {
	for _, s := range []string{
		"/", "/latest/meta-data/", "/latest/meta-data/iam/security-credentials/role",
		"/computeMetadata/v1/instance/service-accounts/default/token", "/a/../b", "/a/./b", "//a",
		"/a%2Fb", "/a\\b", "/a;b", "/a\x00", "/\xc0\xae", "/a b", "/a?b", "/a#b", "/~user/$x&y+z,=@:",
		"/a*b", "/a'b", "/a/b/", "relative", "", "/.", "/..", "/a/.b", "/a/..b",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		if CanonicalPath(p) != "" {
			return
		}
		if wire := (&url.URL{Path: p}).EscapedPath(); wire != p {
			t.Fatalf("canonical path %q goes on the wire as %q", p, wire)
		}
		if u, err := url.ParseRequestURI(p); err != nil || u.Path != p || (u.RawPath != "" && u.RawPath != p) {
			t.Fatalf("canonical path %q parses back as %+v (%v)", p, u, err)
		}
		clean := path.Clean(p)
		if strings.HasSuffix(p, "/") && p != "/" {
			clean += "/"
		}
		if clean != p {
			t.Fatalf("canonical path %q cleans to %q", p, clean)
		}
		pat, err := compilePattern(p)
		if err != nil {
			t.Fatalf("canonical path %q is not a valid literal pattern: %v", p, err)
		}
		if !pat.match(p) {
			t.Fatalf("literal pattern %q does not match itself", p)
		}
	})
}
