package policy

import (
	"errors"
	"strings"
	"testing"
)

func TestParseAcceptsTheDesignExample(t *testing.T) {
	p, err := Load("testdata/design.yaml")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if len(p.Endpoints()) != 2 || p.Endpoints()[1].Addr.String() != "[fd00:ec2::254]:80" {
		t.Errorf("endpoints = %v", p.Endpoints())
	}
	if got := strings.Join(p.RuleNames(), ","); got != "node-facts,accessors,billing-identity" {
		t.Errorf("rules = %s", got)
	}
	if p.Mode != ModeEnforce || p.DefaultAction != Deny {
		t.Errorf("mode %s default %s", p.Mode, p.DefaultAction)
	}
}

func TestParseReportsEveryProblemWithItsLine(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want []string // substrings, one per expected problem, in line order
	}{
		{
			name: "an unknown field is refused, not ignored",
			doc: `apiVersion: metaguard.dev/v1alpha1
kind: Policy
endpoints: [{name: aws, address: "169.254.169.254:80", flavor: aws}]
rules:
  - name: r
    podselector: {}
`,
			want: []string{"p.yaml:6: field podselector not found in rule"},
		},
		{
			name: "semantic problems name their field and line",
			doc: `apiVersion: metaguard.dev/v1alpha1
kind: Policy
mode: permissive
endpoints:
  - name: aws
    address: 169.254.169.254
    flavor: aws
defaultAction: maybe
rules:
  - name: r
    podSelector: {matchExpressions: [{key: a, operator: Near}]}
    allow:
      - methods: [POST]
        paths: ["relative", "/a/b*"]
    credentials: sometimes
credentialPaths: ["/x//y"]
`,
			want: []string{
				"p.yaml:3: mode: must be enforce or audit",
				"p.yaml:6: endpoints[0].address: must be IP:port",
				"p.yaml:8: defaultAction: must be deny or allow",
				"p.yaml:11: rules[0].podSelector:",
				"p.yaml:13: rules[0].allow[0].methods[0]: must be GET, HEAD, PUT or DELETE",
				"p.yaml:14: rules[0].allow[0].paths[0]: path pattern \"relative\" must start with /",
				"p.yaml:14: rules[0].allow[0].paths[1]: path pattern \"/a/b*\": wildcards must be a whole segment",
				"p.yaml:15: rules[0].credentials: must be strip or allow",
				"p.yaml:16: credentialPaths[0]:",
			},
		},
		{
			name: "duplicates and dangling references are refused",
			doc: `apiVersion: metaguard.dev/v1alpha1
kind: Policy
endpoints:
  - {name: aws, address: "169.254.169.254:80", flavor: aws}
  - {name: aws, address: "169.254.169.254:80", flavor: gcp}
rules:
  - name: r
    endpoints: [nope]
    allow: [{paths: ["/"]}]
  - name: r
    allow: [{paths: ["/"], query: {client_id: []}}]
`,
			want: []string{
				"p.yaml:5: endpoints[1].name: duplicate endpoint name",
				"p.yaml:5: endpoints[1].address: duplicate endpoint address",
				"p.yaml:8: rules[0].endpoints[0]: no endpoint is named \"nope\"",
				"p.yaml:10: rules[1].name: duplicate rule name",
				"p.yaml:11: rules[1].allow[0].query.client_id: list at least one allowed value",
			},
		},
		{
			name: "the wrong kind of document is refused",
			doc:  "apiVersion: v1\nkind: ConfigMap\nendpoints: []\n",
			want: []string{"p.yaml:1: apiVersion:", "p.yaml:2: kind:", "p.yaml:3: endpoints: at least one endpoint"},
		},
		{"an empty file is refused", "", []string{"p.yaml: empty policy document"}},
		{"broken YAML is refused with its line", "apiVersion: x\n  kind: [\n", []string{"p.yaml:2:"}},
		{"two documents are refused", "apiVersion: metaguard.dev/v1alpha1\nkind: Policy\nendpoints: [{name: a, address: \"1.2.3.4:80\", flavor: generic}]\n---\nkind: Policy\n", []string{"more than one YAML document"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse("p.yaml", []byte(tt.doc))
			if err == nil {
				t.Fatalf("Parse succeeded: %+v", p)
			}
			if p != nil {
				t.Errorf("Parse returned a policy with an error; a policy must never be half applied")
			}
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("error %T is not a *ValidationError", err)
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != len(tt.want) {
				t.Fatalf("got %d problems, want %d:\n%s", len(lines), len(tt.want), err)
			}
			for i, w := range tt.want {
				if !strings.Contains(lines[i], w) {
					t.Errorf("problem %d = %q, want it to contain %q", i, lines[i], w)
				}
			}
		})
	}
}

func TestParseDefaults(t *testing.T) {
	p := mustParse(t, `
apiVersion: metaguard.dev/v1alpha1
kind: Policy
endpoints: [{name: a, address: "[fd00:ec2::254]:80", flavor: aws}]
rules: [{name: r, allow: [{paths: ["/"]}]}]
rateLimit: {requestsPerSecond: 2.5}
`)
	if p.Mode != ModeEnforce || p.DefaultAction != Deny {
		t.Errorf("defaults: mode %s defaultAction %s, want enforce deny", p.Mode, p.DefaultAction)
	}
	if p.RateLimit.Burst != 3 {
		t.Errorf("burst defaults to ceil(rate): got %d", p.RateLimit.Burst)
	}
	if got := p.rules[0].allow[0].methods; strings.Join(got, ",") != "GET,HEAD" {
		t.Errorf("methods default to GET,HEAD: got %v", got)
	}
	if p.rules[0].credentialsAllow {
		t.Error("credentials default to strip")
	}
	e := p.Endpoints()[0]
	if got := e.UpstreamHost(""); got != "[fd00:ec2::254]" {
		t.Errorf("UpstreamHost = %q", got)
	}
	if got := e.UpstreamHost("evil.example"); got != "[fd00:ec2::254]" {
		t.Errorf("a Host that does not name the endpoint must be replaced, got %q", got)
	}
	if got := e.UpstreamHost("instance-data"); got != "instance-data" {
		t.Errorf("a Host naming the endpoint is kept, got %q", got)
	}
}

func TestServiceAccountsNameTheirNamespace(t *testing.T) {
	const head = `apiVersion: metaguard.dev/v1alpha1
kind: Policy
endpoints: [{name: aws, address: "169.254.169.254:80", flavor: aws}]
rules:
  - name: r
`
	tests := []struct {
		name string
		rule string
		want string // substring of the error; "" = valid
	}{
		{"namespace/name is accepted", "    serviceAccounts: [shop/checkout]\n    allow: [{paths: [/x]}]\n", ""},
		{"a bare name is refused: any tenant can create one of that name", "    serviceAccounts: [checkout]\n    allow: [{paths: [/x]}]\n", `service account "checkout" names no namespace`},
		{"a bare name is accepted when matchLabels pins the namespace", "    namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: shop}}\n    serviceAccounts: [checkout]\n    allow: [{paths: [/x]}]\n", ""},
		{"a bare name is accepted when a one-value In pins the namespace", "    namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [shop]}]}\n    serviceAccounts: [checkout]\n    allow: [{paths: [/x]}]\n", ""},
		{"a bare name is refused when In lists two namespaces", "    namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [shop, web]}]}\n    serviceAccounts: [checkout]\n    allow: [{paths: [/x]}]\n", "names no namespace"},
		{"a bare name is refused under another namespace label", "    namespaceSelector: {matchLabels: {team: shop}}\n    serviceAccounts: [checkout]\n    allow: [{paths: [/x]}]\n", "names no namespace"},
		{"a qualified name outside the pinned namespace can never match", "    namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: shop}}\n    serviceAccounts: [web/checkout]\n    allow: [{paths: [/x]}]\n", "could never select it"},
		{"an invalid namespace is refused", "    serviceAccounts: [Shop/checkout]\n    allow: [{paths: [/x]}]\n", `namespace "Shop"`},
		{"an empty name is refused", "    serviceAccounts: [shop/]\n    allow: [{paths: [/x]}]\n", `name ""`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("p.yaml", []byte(head+tt.rule))
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tt.want != "" && err == nil:
				t.Fatalf("accepted, want an error containing %q", tt.want)
			case tt.want != "" && !strings.Contains(err.Error(), tt.want):
				t.Fatalf("error %q does not contain %q", err, tt.want)
			}
		})
	}
}
