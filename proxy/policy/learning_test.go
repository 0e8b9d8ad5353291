package policy

import "testing"

func TestGrantsCredentials(t *testing.T) {
	p, err := Parse("t", []byte(`apiVersion: metaguard.dev/v1alpha1
kind: Policy
endpoints: [{name: aws, address: "169.254.169.254:80", flavor: aws}]
rules:
  - {name: accessors, allow: [{paths: ["/**"]}], credentials: allow}
  - {name: readers, allow: [{paths: ["/**"]}], credentials: strip}
  - {name: plain, allow: [{paths: ["/**"]}]}
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, rule string
		want       bool
	}{
		{"a rule saying credentials: allow grants them", "accessors", true},
		{"a rule saying credentials: strip does not", "readers", false},
		{"a rule saying nothing does not", "plain", false},
		{"no rule name grants nothing", "", false},
		{"a rule the policy lacks grants nothing", "gone", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := p.GrantsCredentials(tt.rule); got != tt.want {
				t.Errorf("GrantsCredentials(%q) = %v, want %v", tt.rule, got, tt.want)
			}
		})
	}
}
