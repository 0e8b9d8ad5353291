package policy

import "strings"

// Flavor selects the built-in knowledge about one cloud's metadata API.
type Flavor string

// The flavors a policy endpoint may name.
const (
	FlavorAWS     Flavor = "aws"
	FlavorGCP     Flavor = "gcp"
	FlavorAzure   Flavor = "azure"
	FlavorGeneric Flavor = "generic"
)

// flavorSpec is everything metaguard knows about one cloud's metadata API.
// It is data, kept in one place so that a reviewer can check it against the
// cloud's documentation line by line; flavor_test.go holds a row for every
// entry.
type flavorSpec struct {
	// credentialPaths are the built-in credential class. For AWS the first
	// segment is "*" because every API version ("latest", "1.0",
	// "2016-09-02", ...) serves the same tree.
	credentialPaths []string
	// queryKeys are the only query parameters passed upstream; nil means
	// the query is passed unchanged (generic endpoints).
	queryKeys map[string]bool
	// identityKeys are the query keys that choose which identity a token is
	// for; an allow entry that pins one refuses requests naming another.
	identityKeys []string
	// methods are the HTTP methods the API serves; anything else is 405.
	methods []string
	// writes are the path patterns where the API takes PUT (and DELETE,
	// where it serves that); a write anywhere else is 405. Nil means
	// wherever the method is among methods (generic).
	writes []string
	// putBody says whether a PUT carries a body. Where the API defines
	// none, a body is refused: it can only be a second request waiting for
	// an upstream that answers without reading it.
	putBody bool
	// hosts are names other than the endpoint address that clients put in
	// Host and that the upstream accepts.
	hosts []string
	// answerHeaders go on every answer metaguard makes itself (a denial,
	// a refusal, a 502), as the service puts them on its own errors.
	answerHeaders map[string]string
}

var flavors = map[Flavor]flavorSpec{
	FlavorAWS: {
		// https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-data-categories.html
		credentialPaths: []string{
			// iam/security-credentials/<role> holds the role's keys. The
			// whole iam/ tree, not only security-credentials/: iam/info
			// names the node's instance profile, and a listing of
			// meta-data/ must not reveal that the node has a role at all.
			"/*/meta-data/iam/**",
			// identity-credentials/ec2/security-credentials/ec2-instance:
			// the credentials EC2 itself uses for the instance identity
			// (EC2 Instance Connect, Systems Manager).
			"/*/meta-data/identity-credentials/**",
		},
		// IMDS takes no query parameters; one on a request is an attempt
		// to smuggle something past the path check.
		queryKeys: map[string]bool{},
		methods:   []string{"GET", "HEAD", "PUT"},
		// IMDSv2: PUT /latest/api/token with X-aws-ec2-metadata-token-ttl-seconds
		// and no body is the only write the service defines.
		// https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/configuring-instance-metadata-service.html
		writes: []string{"/latest/api/token"},
		hosts:  []string{"instance-data", "instance-data.ec2.internal"},
	},
	FlavorGCP: {
		// https://cloud.google.com/compute/docs/metadata/predefined-metadata-keys
		// and the guest agent (github.com/GoogleCloudPlatform/guest-agent),
		// which reads the mTLS and workload certificates below.
		credentialPaths: []string{
			// OAuth2 access tokens and OIDC identity tokens of the
			// service accounts. "/**" so that "token/" and anything a
			// future API puts below these is in the class too.
			"/computeMetadata/v1/instance/service-accounts/*/token/**",
			"/computeMetadata/v1/instance/service-accounts/*/identity/**",
			// GKE's bootstrap: the kubelet's client certificate and key.
			"/computeMetadata/v1/instance/attributes/kube-env/**",
			// The metadata server's mTLS root and client certificate with
			// its private key (credentials/certs,
			// credentials/mds-client-certificate): the guest agent's
			// agentcrypto bootstraps HTTPS to the metadata server from it.
			"/computeMetadata/v1/instance/credentials/**",
			// Managed workload identity: X.509 certificates with their
			// privateKeyPem (gce-workload-certificates/workload-identities,
			// trust-anchors, config-status), and the older top-level
			// workload-identities key of the same data.
			"/computeMetadata/v1/instance/gce-workload-certificates/**",
			"/computeMetadata/v1/instance/workload-identities/**",
			// Legacy APIs that do not require Metadata-Flavor, so any SSRF
			// can reach them: credentials as a whole.
			"/0.1/**",
			"/computeMetadata/v1beta1/**",
		},
		queryKeys: setOf(
			"recursive", "alt", "wait_for_change", "timeout_sec", "last_etag",
			// token and identity endpoints
			"scopes", "audience", "format", "licenses",
			// token binding (cloud.google.com/go/auth's compute
			// credentials, credentials/compute.go)
			"transport", "binding-enforcement",
		),
		methods: []string{"GET", "HEAD", "PUT", "DELETE"},
		// Guest attributes are the only values a VM writes or deletes
		// (https://cloud.google.com/compute/docs/metadata/manage-guest-attributes);
		// a PUT carries the value as its body.
		writes:  []string{"/computeMetadata/v1/instance/guest-attributes/**"},
		putBody: true,
		hosts:   []string{"metadata.google.internal", "metadata.google.internal.", "metadata"},
		// The Go client library's on-GCE probe (metadata.OnGCE) looks only
		// for this header, whatever the status: without it a pod refused
		// GET / would be told it is not on GCE at all, and Application
		// Default Credentials would report missing credentials instead of
		// metaguard's refusal. GCE itself sends it on every answer.
		answerHeaders: map[string]string{"Metadata-Flavor": "Google"},
	},
	FlavorAzure: {
		// https://learn.microsoft.com/azure/virtual-machines/instance-metadata-service
		// The managed identity token endpoint and everything below it.
		credentialPaths: []string{"/metadata/identity/**"},
		queryKeys: setOf(
			"api-version", "format", "resource", "client_id", "object_id",
			"msi_res_id", "mi_res_id", "principal_id", "bypass_cache",
			"nonce", "extended",
		),
		// https://learn.microsoft.com/entra/identity/managed-identities-azure-resources/how-to-use-vm-token#get-a-token-using-http
		identityKeys: []string{"client_id", "object_id", "principal_id", "msi_res_id", "mi_res_id"},
		// Azure IMDS serves GET only; a PUT or HEAD is somebody probing.
		methods: []string{"GET"},
	},
	FlavorGeneric: {
		methods: []string{"GET", "HEAD", "PUT"},
		putBody: true,
	},
}

func setOf(keys ...string) map[string]bool {
	m := make(map[string]bool, len(keys))
	for _, k := range keys {
		m[k] = true
	}
	return m
}

// awsVersionSegment reports whether s is an IMDS API version segment:
// "latest", "1.0" or a date like "2016-09-02". A credentialPaths entry that
// starts with one is widened to every version, since all of them serve the
// same data.
func awsVersionSegment(s string) bool {
	if s == "latest" || s == "1.0" {
		return true
	}
	if len(s) != 10 || s[4] != '-' || s[7] != '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if i == 4 || i == 7 {
			continue
		}
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// widenAWSVersion rewrites "/latest/user-data" to "/*/user-data".
func widenAWSVersion(p string) string {
	first, rest, ok := strings.Cut(strings.TrimPrefix(p, "/"), "/")
	if !ok || !awsVersionSegment(first) {
		return p
	}
	return "/*/" + rest
}
