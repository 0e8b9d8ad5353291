package policy

import (
	"fmt"
	"slices"
	"testing"
)

// TestEveryBuiltInCredentialPathHasARow holds the built-in credential class
// to a reviewed table: every entry of every flavor has a row here with a
// path the cloud really serves under it, and the class must contain it.
// Adding an entry without a row fails, so does dropping one.
func TestEveryBuiltInCredentialPathHasARow(t *testing.T) {
	rows := []struct {
		flavor  Flavor
		entry   string
		samples []string
	}{
		{FlavorAWS, "/*/meta-data/iam/**", []string{
			"/latest/meta-data/iam/security-credentials/node-role",
			"/latest/meta-data/iam/security-credentials/",
			"/latest/meta-data/iam/info",
			"/latest/meta-data/iam/",
			"/2016-09-02/meta-data/iam/security-credentials/node-role",
			"/1.0/meta-data/iam/info",
		}},
		{FlavorAWS, "/*/meta-data/identity-credentials/**", []string{
			"/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance",
			"/latest/meta-data/identity-credentials/ec2/info",
		}},
		{FlavorGCP, "/computeMetadata/v1/instance/service-accounts/*/token/**", []string{
			"/computeMetadata/v1/instance/service-accounts/default/token",
			"/computeMetadata/v1/instance/service-accounts/default/token/",
			"/computeMetadata/v1/instance/service-accounts/sa@p.iam.gserviceaccount.com/token",
		}},
		{FlavorGCP, "/computeMetadata/v1/instance/service-accounts/*/identity/**", []string{
			"/computeMetadata/v1/instance/service-accounts/default/identity",
		}},
		{FlavorGCP, "/computeMetadata/v1/instance/attributes/kube-env/**", []string{
			"/computeMetadata/v1/instance/attributes/kube-env",
		}},
		{FlavorGCP, "/computeMetadata/v1/instance/credentials/**", []string{
			"/computeMetadata/v1/instance/credentials/certs",
			"/computeMetadata/v1/instance/credentials/mds-client-certificate",
			"/computeMetadata/v1/instance/credentials/",
		}},
		{FlavorGCP, "/computeMetadata/v1/instance/gce-workload-certificates/**", []string{
			"/computeMetadata/v1/instance/gce-workload-certificates/workload-identities",
			"/computeMetadata/v1/instance/gce-workload-certificates/trust-anchors",
			"/computeMetadata/v1/instance/gce-workload-certificates/config-status",
		}},
		{FlavorGCP, "/computeMetadata/v1/instance/workload-identities/**", []string{
			"/computeMetadata/v1/instance/workload-identities",
		}},
		{FlavorGCP, "/0.1/**", []string{"/0.1/meta-data/service-accounts/default/acquire"}},
		{FlavorGCP, "/computeMetadata/v1beta1/**", []string{"/computeMetadata/v1beta1/instance/service-accounts/default/token"}},
		{FlavorAzure, "/metadata/identity/**", []string{
			"/metadata/identity/oauth2/token",
			"/metadata/identity/info",
		}},
	}
	// Paths next to the class that must stay outside it.
	outside := map[Flavor][]string{
		FlavorAWS:   {"/latest/meta-data/instance-id", "/latest/meta-data/placement/region", "/latest/meta-data/"},
		FlavorGCP:   {"/computeMetadata/v1/instance/service-accounts/default/email", "/computeMetadata/v1/instance/attributes/cluster-name", "/computeMetadata/v1/project/project-id"},
		FlavorAzure: {"/metadata/instance", "/metadata/instance/compute/location"},
	}
	for f, spec := range flavors {
		for _, entry := range spec.credentialPaths {
			if !slices.ContainsFunc(rows, func(r struct {
				flavor  Flavor
				entry   string
				samples []string
			}) bool {
				return r.flavor == f && r.entry == entry
			}) {
				t.Errorf("flavor %s: built-in credential path %q has no row in this test", f, entry)
			}
		}
	}
	for _, r := range rows {
		t.Run(fmt.Sprintf("%s %s", r.flavor, r.entry), func(t *testing.T) {
			if !slices.Contains(flavors[r.flavor].credentialPaths, r.entry) {
				t.Fatalf("the %s class lost %q", r.flavor, r.entry)
			}
			ep := endpointOf(t, r.flavor)
			for _, p := range r.samples {
				if !ep.IsCredential(p) {
					t.Errorf("%s is not in the %s credential class", p, r.flavor)
				}
			}
		})
	}
	for f, paths := range outside {
		ep := endpointOf(t, f)
		for _, p := range paths {
			if ep.IsCredential(p) {
				t.Errorf("%s: %s is in the credential class; it is an ordinary path", f, p)
			}
		}
	}
}

func endpointOf(t *testing.T, f Flavor) *Endpoint {
	t.Helper()
	p := mustParse(t, fmt.Sprintf(`
apiVersion: metaguard.dev/v1alpha1
kind: Policy
endpoints: [{name: e, address: "169.254.169.254:80", flavor: %s}]
`, f))
	return p.Endpoints()[0]
}
