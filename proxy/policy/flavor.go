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
// cloud's documentation line by line.
type flavorSpec struct {
	// credentialPaths are the built-in credential class. For AWS the first
	// segment is "*" because every API version ("latest", "1.0",
	// "2016-09-02", ...) serves the same tree.
	credentialPaths []string
	// queryKeys are the only query parameters passed upstream; nil means
	// the query is passed unchanged (generic endpoints).
	queryKeys map[string]bool
	// methods are the HTTP methods the API serves; anything else is 405.
	methods []string
	// hosts are names other than the endpoint address that clients put in
	// Host and that the upstream accepts.
	hosts []string
}

var flavors = map[Flavor]flavorSpec{
	FlavorAWS: {
		credentialPaths: []string{
			// The whole iam/ tree, not only security-credentials/: iam/info
			// names the node's instance profile, and a listing of
			// meta-data/ must not reveal that the node has a role at all.
			"/*/meta-data/iam/**",
			"/*/meta-data/identity-credentials/**",
		},
		// IMDS takes no query parameters; one on a request is an attempt
		// to smuggle something past the path check.
		queryKeys: map[string]bool{},
		methods:   []string{"GET", "HEAD", "PUT"},
		hosts:     []string{"instance-data", "instance-data.ec2.internal"},
	},
	FlavorGCP: {
		credentialPaths: []string{
			// "/**" so that "token/" and anything a future API puts below
			// these is in the class too, not only the exact leaf.
			"/computeMetadata/v1/instance/service-accounts/*/token/**",
			"/computeMetadata/v1/instance/service-accounts/*/identity/**",
			"/computeMetadata/v1/instance/attributes/kube-env/**",
			// Legacy APIs that do not require Metadata-Flavor, so any SSRF
			// can reach them: credentials as a whole.
			"/0.1/**",
			"/computeMetadata/v1beta1/**",
		},
		queryKeys: setOf(
			"recursive", "alt", "wait_for_change", "timeout_sec", "last_etag",
			// token and identity endpoints
			"scopes", "audience", "format", "licenses",
		),
		methods: []string{"GET", "HEAD", "PUT"},
		hosts:   []string{"metadata.google.internal", "metadata.google.internal.", "metadata"},
	},
	FlavorAzure: {
		credentialPaths: []string{"/metadata/identity/**"},
		queryKeys: setOf(
			"api-version", "format", "resource", "client_id", "object_id",
			"msi_res_id", "mi_res_id", "principal_id", "bypass_cache",
			"nonce", "extended",
		),
		// Azure IMDS serves GET only; a PUT or HEAD is somebody probing.
		methods: []string{"GET"},
	},
	FlavorGeneric: {
		methods: []string{"GET", "HEAD", "PUT"},
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
