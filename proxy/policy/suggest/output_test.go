package suggest

import (
	"bytes"
	"strings"
	"testing"

	"metaguard.dev/metaguard/proxy/policy"
)

func TestPolicyOutput(t *testing.T) {
	aws := mustParse(t, awsConfig)
	long := strings.Repeat("x", 63)
	tests := []struct {
		name   string
		config string
		opts   Options
		log    func() []byte
		has    []string // substrings of the YAML
		hasNot []string
	}{
		{"the same use on two endpoints is one rule listing both", awsConfig, labelBy("app"),
			func() []byte {
				return logOf(t, aws, append(gets(web1, "aws", "/latest/meta-data/instance-id"), gets(web1, "aws-v6", "/latest/meta-data/instance-id")...))
			},
			[]string{"- name: shop-web\n", "endpoints: [aws, aws-v6]"}, []string{"shop-web-aws"}},
		{"the mode of the policy in force is kept", awsConfig, labelBy("app"),
			func() []byte { return logOf(t, aws, gets(web1, "aws", "/latest/meta-data/instance-id")) },
			[]string{"\nmode: audit\n", "\ndefaultAction: deny\n", "rateLimit: {requestsPerSecond: 50, burst: 100}", `credentialPaths: ["/latest/user-data"]`},
			[]string{"node-facts"}},
		{"a mode given overrides it", awsConfig, Options{GroupBy: GroupBy{Kind: ByLabel, Label: "app"}, Mode: policy.ModeEnforce},
			func() []byte { return logOf(t, aws, gets(web1, "aws", "/latest/meta-data/instance-id")) },
			[]string{"\nmode: enforce\n"}, nil},
		{"a log with no usable line denies everything", awsConfig, labelBy("app"),
			func() []byte { return deniedLines(t, "aws") },
			[]string{"rules: [] # no served request of an identified pod was seen"}, nil},
		{"label values that read as other YAML types are quoted", awsConfig, labelBy("app"),
			func() []byte {
				return logOf(t, aws, append(
					gets(pod{"a", "shop", "sa", map[string]string{"app": "true"}}, "aws", "/latest/meta-data/instance-id"),
					gets(pod{"b", "shop", "sa", map[string]string{"app": "1.0"}}, "aws", "/latest/meta-data/instance-id")...))
			},
			[]string{`app: "true"`, `app: "1.0"`}, nil},
		{"groups whose names differ only in case get distinct rule names", awsConfig, labelBy("app"),
			func() []byte {
				return logOf(t, aws, append(
					gets(pod{"a", "shop", "sa", map[string]string{"app": "Web"}}, "aws", "/latest/meta-data/instance-id"),
					gets(pod{"b", "shop", "sa", map[string]string{"app": "web"}}, "aws", "/latest/meta-data/hostname")...))
			},
			[]string{"- name: shop-web-", "app: Web", "app: web"}, nil},
		{"long names are shortened to a valid rule name", awsConfig, labelBy("app"),
			func() []byte {
				return logOf(t, aws, gets(pod{"a", long, "sa", map[string]string{"app": long}}, "aws", "/latest/meta-data/instance-id"))
			},
			[]string{"- name: " + long[:54] + "-"}, nil},
		{"grouping by namespace selects the namespace only", awsConfig, Options{GroupBy: GroupBy{Kind: ByNamespace}},
			func() []byte { return logOf(t, aws, gets(web1, "aws", "/latest/meta-data/instance-id")) },
			[]string{"- name: shop\n", "every pod in namespace shop"}, []string{"podSelector", "serviceAccounts"}},
		{"grouping by service account selects the account in its namespace", awsConfig, Options{GroupBy: GroupBy{Kind: ByServiceAccount}},
			func() []byte { return logOf(t, aws, gets(web1, "aws", "/latest/meta-data/instance-id")) },
			[]string{"- name: shop-sa-web\n", "serviceAccounts: [shop/web]", "kubernetes.io/metadata.name: shop"}, []string{"podSelector"}},
		{"aliases in the policy in force are resolved when copied", `apiVersion: metaguard.dev/v1alpha1
kind: Policy
endpoints: [{name: aws, address: "169.254.169.254:80", flavor: aws}]
rules: [{name: r, allow: [{paths: &secret ["/latest/user-data"]}]}]
credentialPaths: *secret
`, labelBy("app"),
			func() []byte { return logOf(t, aws, gets(web1, "aws", "/latest/meta-data/instance-id")) },
			[]string{`credentialPaths: ["/latest/user-data"]`}, []string{"*secret", "&secret"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, sug, _ := suggestFrom(t, tt.config, tt.opts, tt.log())
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
		})
	}
}

func TestRuleName(t *testing.T) {
	tests := []struct {
		name, base, want string
	}{
		{"a valid name is kept", "shop-web", "shop-web"},
		{"upper case and odd characters become a valid name", "Shop_Web/1", "shop-web-1"},
		{"leading and trailing punctuation is trimmed", "-.web.-", "web"},
		{"nothing usable falls back to group", "___", "group"},
		{"a name of 63 characters is kept", strings.Repeat("a", 63), strings.Repeat("a", 63)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ruleName(tt.base, "id"); got != tt.want {
				t.Errorf("ruleName(%q) = %q, want %q", tt.base, got, tt.want)
			}
		})
	}
	t.Run("a long name is cut and made unique with a hash", func(t *testing.T) {
		a, b := ruleName(strings.Repeat("a", 70), "one"), ruleName(strings.Repeat("a", 70), "two")
		if len(a) > 63 || a == b || !strings.HasPrefix(a, strings.Repeat("a", 54)+"-") {
			t.Errorf("got %q and %q", a, b)
		}
	})
}

func TestOptions(t *testing.T) {
	tests := []struct {
		name, in string
		want     GroupBy
		err      bool
	}{
		{"label=app groups by the app label", "label=app", GroupBy{Kind: ByLabel, Label: "app"}, false},
		{"a prefixed label key is accepted", "label=app.kubernetes.io/name", GroupBy{Kind: ByLabel, Label: "app.kubernetes.io/name"}, false},
		{"serviceaccount groups by service account", "serviceaccount", GroupBy{Kind: ByServiceAccount}, false},
		{"namespace groups by namespace", "namespace", GroupBy{Kind: ByNamespace}, false},
		{"an empty label key is refused", "label=", GroupBy{}, true},
		{"an invalid label key is refused", "label=a b", GroupBy{}, true},
		{"anything else is refused", "pod", GroupBy{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseGroupBy(tt.in)
			if (err != nil) != tt.err || got != tt.want {
				t.Errorf("ParseGroupBy(%q) = %+v, %v", tt.in, got, err)
			}
			if err == nil && got.String() != tt.in {
				t.Errorf("String() = %q, want %q", got.String(), tt.in)
			}
		})
	}
	for _, tt := range []struct {
		name, config string
		opts         Options
		msg          string
	}{
		{"an invalid policy in force is refused with its problems", "apiVersion: x\n", labelBy("app"), "parsing the policy in force"},
		{"a negative threshold is refused", awsConfig, Options{GroupBy: GroupBy{Kind: ByNamespace}, CollapseThreshold: -1}, "collapse threshold"},
		{"an unknown mode is refused", awsConfig, Options{GroupBy: GroupBy{Kind: ByNamespace}, Mode: "loud"}, "mode must be"},
		{"label grouping without a key is refused", awsConfig, Options{}, "label key"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New("c", []byte(tt.config), tt.opts); err == nil || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("got %v, want an error saying %q", err, tt.msg)
			}
		})
	}
}

func TestIdentityPins(t *testing.T) {
	const unpinnedConfig = `apiVersion: metaguard.dev/v1alpha1
kind: Policy
mode: audit
endpoints: [{name: azure, address: "169.254.169.254:80", flavor: azure}]
rules:
  - name: other-path
    allow: [{paths: ["/metadata/identity/other"], query: {client_id: ["x"]}}]
`
	const onlyIdentityConfig = `apiVersion: metaguard.dev/v1alpha1
kind: Policy
mode: audit
endpoints: [{name: azure, address: "169.254.169.254:80", flavor: azure}]
rules:
  - name: billing-identity
    podSelector: {matchLabels: {app: billing}}
    allow: [{paths: ["/metadata/identity/oauth2/token"]}]
    credentials: allow
`
	token := func(keys ...string) call {
		return call{pod: billing, endpoint: "azure", method: "GET", path: "/metadata/identity/oauth2/token", queryKeys: keys}
	}
	granted := labelBy("app")
	granted.GrantCredentials = []string{"payments-billing"}
	tests := []struct {
		name    string
		config  string
		opts    Options
		calls   []call
		has     []string
		warning bool
	}{
		{"a token chosen by client_id quotes the pin of the policy in force", azureConfig, labelBy("app"), []call{token("api-version", "client_id", "resource")},
			[]string{"chooses a managed identity by client_id", `The policy in force pins it in rule billing-identity: query: {client_id: ["00000000-0000-0000-0000-000000000001"]}`}, true},
		{"a granted token chosen by another key is flagged, and a pin on another path is not quoted", unpinnedConfig, granted, []call{token("api-version", "msi_res_id", "resource")},
			[]string{"chooses a managed identity by msi_res_id"}, true},
		{"a token of the only identity needs no pin", onlyIdentityConfig, labelBy("app"), []call{token("api-version", "resource")},
			[]string{"GET /metadata/identity/oauth2/token by pod billing-1: the policy in force granted it (query keys: api-version, resource)"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, sug, _ := suggestFrom(t, tt.config, tt.opts, logOf(t, mustParse(t, tt.config), tt.calls))
			for _, s := range tt.has {
				if !bytes.Contains(sug.YAML, []byte(s)) {
					t.Errorf("output lacks %q:\n%s", s, sug.YAML)
				}
			}
			if bytes.Contains(sug.YAML, []byte("pins it in rule other-path")) {
				t.Errorf("quotes a pin of another path:\n%s", sug.YAML)
			}
			want := 0
			if tt.warning {
				want = 1
			}
			if len(sug.Warnings) != want || (want == 1 && !strings.Contains(sug.Warnings[0], "rule payments-billing-credentials: /metadata/identity/oauth2/token chooses an identity by")) {
				t.Errorf("warnings %q, want %d naming the rule", sug.Warnings, want)
			}
		})
	}
}
