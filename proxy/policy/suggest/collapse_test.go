package suggest

import (
	"fmt"
	"strings"
	"testing"

	"metaguard.dev/metaguard/proxy/policy"
)

func TestCollapse(t *testing.T) {
	always := func(string) bool { return true }
	tests := []struct {
		name      string
		paths     []string // used by two pods each; "1:" in front: by one pod
		threshold int
		mayWiden  func(string) bool
		want      []string
	}{
		{"paths one pod used never become a pattern", []string{"1:/a/b/1", "1:/a/b/2", "1:/a/b/3", "1:/a/b/4", "1:/a/b/5/x"}, 2, always,
			[]string{"/a/b/1", "/a/b/2", "/a/b/3", "/a/b/4", "/a/b/5/x"}},
		{"only siblings two pods used count towards the threshold", []string{"/a/b/1", "/a/b/2", "/a/b/3", "1:/a/b/4", "1:/a/b/5"}, 4, always,
			[]string{"/a/b/1", "/a/b/2", "/a/b/3", "/a/b/4", "/a/b/5"}},
		{"a star made of shared siblings covers one pod's sibling too", []string{"/a/b/1", "/a/b/2", "1:/a/b/3"}, 2, always,
			[]string{"/a/b/*=3"}},
		{"what one pod used deeper than a star stays literal", []string{"/a/b/1", "/a/b/2", "1:/a/b/1/x", "1:/a/b/3/y/z", "1:/a/b/3/"}, 2, always,
			[]string{"/a/b/*=2", "/a/b/1/x", "/a/b/3/", "/a/b/3/y/z"}},
		{"a double star needs shared paths below the siblings", []string{"/a/b/1/x", "/a/b/2", "1:/a/b/3/y"}, 2, always,
			[]string{"/a/b/**=3"}},
		{"fewer siblings than the threshold stay literal", []string{"/a/b/1", "/a/b/2", "/a/b/3"}, 4, always,
			[]string{"/a/b/1", "/a/b/2", "/a/b/3"}},
		{"enough leaf siblings become one star", []string{"/a/b/1", "/a/b/2", "/a/b/3", "/a/b/4"}, 4, always,
			[]string{"/a/b/*=4"}},
		{"siblings with children of their own become a double star", []string{"/a/b/1/x", "/a/b/2/y/z", "/a/b/3", "/a/b/4", "/a/b/"}, 4, always,
			[]string{"/a/b/**=5"}},
		{"a star keeps the directory and its listing literal, since star matches neither", []string{"/a/b", "/a/b/", "/a/b/1", "/a/b/2", "/a/b/3", "/a/b/4"}, 4, always,
			[]string{"/a/b", "/a/b/", "/a/b/*=4"}},
		{"the listing does not count as a sibling", []string{"/a/b/", "/a/b/1", "/a/b/2", "/a/b/3"}, 4, always,
			[]string{"/a/b/", "/a/b/1", "/a/b/2", "/a/b/3"}},
		{"the highest directory with enough siblings wins", []string{"/a/1/x", "/a/1/y", "/a/2", "/a/3", "/a/4"}, 2, always,
			[]string{"/a/**=5"}},
		{"the root is never collapsed", []string{"/1", "/2", "/3", "/4", "/"}, 2, always,
			[]string{"/", "/1", "/2", "/3", "/4"}},
		{"the AWS version level is never widened", []string{"/latest/meta-data/x", "/1.0/meta-data/x", "/2016-09-02/meta-data/x", "/2009-04-04/meta-data/x"}, 2, func(d string) bool { return d != "" },
			[]string{"/1.0/meta-data/x", "/2009-04-04/meta-data/x", "/2016-09-02/meta-data/x", "/latest/meta-data/x"}},
		{"a directory with a credential below stays literal, its safe subdirectories collapse",
			[]string{"/m/iam/x", "/m/a", "/m/b", "/m/c", "/m/p/1", "/m/p/2"}, 2,
			func(d string) bool { return !strings.HasPrefix("/m/iam", d) },
			[]string{"/m/a", "/m/b", "/m/c", "/m/iam/x", "/m/p/*=2"}},
		{"threshold zero never collapses", []string{"/a/1", "/a/2", "/a/3", "/a/4", "/a/5"}, 0, always,
			[]string{"/a/1", "/a/2", "/a/3", "/a/4", "/a/5"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var tr trie
			for _, p := range tt.paths {
				if one, ok := strings.CutPrefix(p, "1:"); ok {
					tr.insert(one, podSet{7}, 1)
				} else {
					tr.insert(p, podSet{1, 2}, 2)
				}
			}
			var got []string
			for _, c := range collapse(&tr, tt.threshold, tt.mayWiden) {
				if c.paths > 1 {
					got = append(got, fmt.Sprintf("%s=%d", c.pattern, c.paths))
				} else {
					got = append(got, c.pattern)
				}
			}
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Errorf("got  %v\nwant %v", got, tt.want)
			}
		})
	}
}

// TestCollapseNeverWidensIntoTheCredentialClass checks the real credential
// test on the built-in classes: with a threshold of 1, everything that may
// be widened is, and still no pattern reaches a credential path.
func TestCollapseNeverWidensIntoTheCredentialClass(t *testing.T) {
	tests := []struct {
		name, config, endpoint string
		paths                  []string
		credentials            []string
	}{
		{"aws siblings of iam stay literal", awsConfig, "aws",
			[]string{"/latest/meta-data/ami-id", "/latest/meta-data/hostname", "/latest/meta-data/placement/region", "/latest/meta-data/mac", "/latest/dynamic/instance-identity/document"},
			[]string{"/latest/meta-data/iam/info", "/latest/meta-data/iam/security-credentials/r", "/latest/user-data", "/latest/meta-data/identity-credentials/ec2/info"}},
		{"gcp siblings of a token and of kube-env stay literal", gcpConfig, "gcp",
			[]string{"/computeMetadata/v1/instance/service-accounts/default/email", "/computeMetadata/v1/instance/service-accounts/default/scopes",
				"/computeMetadata/v1/instance/attributes/cluster-name", "/computeMetadata/v1/instance/zone", "/computeMetadata/v1/project/project-id"},
			[]string{"/computeMetadata/v1/instance/service-accounts/default/token", "/computeMetadata/v1/instance/service-accounts/x/identity",
				"/computeMetadata/v1/instance/attributes/kube-env", "/0.1/meta-data/x", "/computeMetadata/v1beta1/instance/x"}},
		{"azure siblings of identity stay literal", azureConfig, "azure",
			[]string{"/metadata/instance/compute/location", "/metadata/instance/network", "/metadata/attested/document", "/metadata/scheduledevents"},
			[]string{"/metadata/identity/oauth2/token", "/metadata/identity/info"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pol := mustParse(t, tt.config)
			ep, _ := pol.EndpointByName(tt.endpoint)
			var tr trie
			for _, p := range tt.paths {
				tr.insert(p, podSet{1, 2}, 2)
			}
			out := collapse(&tr, 1, func(dir string) bool { return !ep.IsCredential(dir) && !listsCredentials(pol, ep, dir) })
			var patterns []string
			for _, c := range out {
				patterns = append(patterns, c.pattern)
			}
			text := "apiVersion: metaguard.dev/v1alpha1\nkind: Policy\nendpoints: [{name: x, address: \"1.2.3.4:80\", flavor: " + string(ep.Flavor) +
				"}]\nrules: [{name: r, allow: [{paths: [\"" + strings.Join(patterns, "\", \"") + "\"]}], credentials: allow}]\n"
			widened := mustParse(t, text)
			x := widened.Endpoints()[0]
			for _, cred := range tt.credentials {
				if d := widened.Decide(pod{}.identity(), policy.Request{Endpoint: x, Method: "GET", Path: cred}); d.Action != policy.Deny {
					t.Errorf("patterns %v reach credential %s", patterns, cred)
				}
			}
			for _, p := range tt.paths {
				if d := widened.Decide(pod{}.identity(), policy.Request{Endpoint: x, Method: "GET", Path: p}); d.Action == policy.Deny {
					t.Errorf("patterns %v lost used path %s", patterns, p)
				}
			}
		})
	}
}
