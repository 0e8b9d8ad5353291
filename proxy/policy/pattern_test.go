package policy

import "testing"

func TestPatternMatch(t *testing.T) {
	tests := []struct {
		pattern, path string
		want          bool
	}{
		{"/latest/meta-data/instance-id", "/latest/meta-data/instance-id", true},
		{"/latest/meta-data/instance-id", "/latest/meta-data/instance-id/", false},
		{"/latest/meta-data/", "/latest/meta-data", false},
		{"/latest/meta-data/", "/latest/meta-data/", true},
		{"/latest/*/instance-id", "/latest/meta-data/instance-id", true},
		{"/latest/*", "/latest/", false},
		{"/latest/*", "/latest/a/b", false},
		{"/latest/**", "/latest", true},
		{"/latest/**", "/latest/", true},
		{"/latest/**", "/latest/a/b/c/", true},
		{"/latest/**", "/latestx", false},
		{"/**", "/", true},
		{"/**", "/anything/at/all", true},
		{"/a/**/z", "/a/z", true},
		{"/a/**/z", "/a/b/c/z", true},
		{"/a/**/z", "/a/b/c/zz", false},
		{"/a/**/z/", "/a/b/z/", true},
		{"/*/meta-data/iam/**", "/2016-09-02/meta-data/iam/security-credentials/role", true},
		{"/*/meta-data/iam/**", "/latest/meta-data/iam", true},
		{"/*/meta-data/iam/**", "/latest/meta-data/iamx", false},
		{"/Latest/x", "/latest/x", false},
	}
	for _, tt := range tests {
		p, err := compilePattern(tt.pattern)
		if err != nil {
			t.Fatalf("compilePattern(%q): %v", tt.pattern, err)
		}
		if got := p.match(tt.path); got != tt.want {
			t.Errorf("%q matching %q = %v, want %v", tt.pattern, tt.path, got, tt.want)
		}
	}
}

func TestPatternHasDescendant(t *testing.T) {
	tests := []struct {
		pattern, dir string
		want         bool
	}{
		{"/*/meta-data/iam/**", "/latest/meta-data/", true},
		{"/*/meta-data/iam/**", "/latest/meta-data", true},
		{"/*/meta-data/iam/**", "/latest/", true},
		{"/*/meta-data/iam/**", "/", true},
		{"/*/meta-data/iam/**", "/latest/meta-data/placement/", false},
		{"/*/meta-data/iam/**", "/latest/meta-data/iam/", true},
		{"/latest/user-data", "/latest/", true},
		{"/latest/user-data", "/latest/user-data", false},
		{"/computeMetadata/v1/instance/service-accounts/*/token", "/computeMetadata/v1/instance/service-accounts/default/", true},
		{"/computeMetadata/v1/instance/service-accounts/*/token", "/computeMetadata/v1/instance/service-accounts/default/email", false},
		{"/computeMetadata/v1/instance/attributes/kube-env", "/computeMetadata/v1/instance/", true},
		{"/computeMetadata/v1/instance/attributes/kube-env", "/computeMetadata/v1/project/", false},
	}
	for _, tt := range tests {
		p := mustPattern(tt.pattern)
		if got := p.hasDescendant(tt.dir); got != tt.want {
			t.Errorf("%q below %q = %v, want %v", tt.pattern, tt.dir, got, tt.want)
		}
	}
}

func TestCompilePatternRefusesWhatCanNeverMatch(t *testing.T) {
	for _, p := range []string{"latest", "/a//b", "/a/role-*", "/a/../b", "/a/./b", "/a/%2e", "/a\\b", "/a;b", "/a/b*/"} {
		if _, err := compilePattern(p); err == nil {
			t.Errorf("compilePattern(%q) succeeded, want an error", p)
		}
	}
}

func TestCanonicalPath(t *testing.T) {
	ok := []string{"/", "/latest/meta-data/", "/latest/meta-data/instance-id", "/computeMetadata/v1/instance/attributes/a_b.c~d", "/x:y@z=1&2+3,4$5"}
	for _, p := range ok {
		if why := CanonicalPath(p); why != "" {
			t.Errorf("CanonicalPath(%q) = %q, want canonical", p, why)
		}
	}
	bad := []string{"", "latest", "//", "/a//b", "/a/./b", "/a/../b", "/a/..", "/a/.", "/%2e%2e/", "/a%2Fb", "/a\\b", "/a;b", "/a\x00b", "/a\tb", "/caf\xc3\xa9", "/a b", "/a*b", "/a\"b", "/a'b", "/a(b)", "/a[b]", "/a?b", "/a#b"}
	for _, p := range bad {
		if why := CanonicalPath(p); why == "" {
			t.Errorf("CanonicalPath(%q) accepted a non-canonical path", p)
		}
	}
}
