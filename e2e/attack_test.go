//go:build e2e

package e2e

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"metaguard.dev/metaguard/e2e/fakecloud"
	"metaguard.dev/metaguard/e2e/sandbox"
)

// attackPolicy lets web pods read the GCP and AWS trees with credentials
// stripped, the broadest thing short of credentials: every attack below
// tries to turn that into a credential or into a request metaguard did not
// judge.
const attackPolicy = `apiVersion: metaguard.dev/v1alpha1
kind: Policy
endpoints:
  - {name: aws, address: "169.254.169.254:80", flavor: aws}
  - {name: gcp, address: "169.254.169.252:80", flavor: gcp}
defaultAction: deny
rules:
  - name: readers
    podSelector: {matchLabels: {app: web}}
    allow:
      - methods: [GET, HEAD]
        paths: ["/", "/computeMetadata/v1/**", "/latest/meta-data/**"]
      - methods: [PUT]
        paths: ["/computeMetadata/v1/instance/guest-attributes/**"]
`

// gcpReq is a request line and headers as a GCP client would send them,
// plus extra header lines, ending the header block.
func gcpReq(method, target string, extra ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: metadata.google.internal\r\nMetadata-Flavor: Google\r\n", method, target)
	for _, h := range extra {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("\r\n")
	return b.String()
}

const (
	saDir = "/computeMetadata/v1/instance/service-accounts/default/"
	token = saDir + "token"
	// guestAttr is writable: GCE guest attributes take PUT (the fake
	// answers 405, which is enough to see what reached it).
	guestAttr = "/computeMetadata/v1/instance/guest-attributes/ns/key"
)

// hostileRequest is bytes a compromised pod sends, what it must get back
// and what the upstream may see of it.
type hostileRequest struct {
	name string
	raw  string
	// status lists the statuses of the responses on the connection, in
	// order; a smuggled second request gets its own.
	status []int
	// forwarded is every request the upstream may receive, as
	// "METHOD path?query"; nil means nothing at all.
	forwarded []string
}

// hostileRequests are the attacks of RELIABILITY.md against the GCP endpoint,
// whose upstream records every request it receives.
var hostileRequests = []hostileRequest{
	// Request smuggling: whatever framing wins, the first request is
	// refused, and anything parsed after it is judged on its own.
	{"Content-Length and Transfer-Encoding together",
		"GET /computeMetadata/v1/instance/zone HTTP/1.1\r\nHost: metadata.google.internal\r\nMetadata-Flavor: Google\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + gcpReq("GET", token),
		[]int{400, 403}, nil},
	{"two different Content-Lengths",
		"GET /computeMetadata/v1/instance/zone HTTP/1.1\r\nHost: metadata.google.internal\r\nContent-Length: 0\r\nContent-Length: 44\r\n\r\n" + gcpReq("GET", token),
		[]int{400}, nil},
	{"an obfuscated Transfer-Encoding",
		"GET /computeMetadata/v1/instance/zone HTTP/1.1\r\nHost: metadata.google.internal\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
		[]int{501}, nil},
	{"a chunked body on GET hiding a second request",
		"GET /computeMetadata/v1/instance/zone HTTP/1.1\r\nHost: metadata.google.internal\r\nTransfer-Encoding: chunked\r\n\r\n" +
			fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(gcpReq("GET", token)), gcpReq("GET", token)),
		[]int{400}, nil},
	// PUT is the one method with a body (GCE guest attributes): its
	// framing must be unambiguous too.
	{"a chunked PUT",
		gcpReq("PUT", guestAttr, "Transfer-Encoding: chunked") + "5\r\nhello\r\n0\r\n\r\n", []int{400}, nil},
	{"a PUT with Content-Length and Transfer-Encoding hiding a second request",
		gcpReq("PUT", guestAttr, "Content-Length: 5", "Transfer-Encoding: chunked") + "0\r\n\r\n" + gcpReq("GET", token),
		[]int{400, 403}, nil},
	{"a PUT body within Content-Length is forwarded as judged",
		gcpReq("PUT", guestAttr, "Content-Length: 5") + "hello", []int{200}, []string{"PUT " + guestAttr}},
	{"a body on GET announced by Content-Length", gcpReq("GET", "/computeMetadata/v1/instance/zone", "Content-Length: 5") + "hello", []int{400}, nil},
	{"a pipelined credential request behind an allowed one",
		gcpReq("GET", "/computeMetadata/v1/instance/zone") + gcpReq("GET", token),
		[]int{200, 403}, []string{"GET /computeMetadata/v1/instance/zone"}},

	// Request-target forms other than origin-form.
	{"absolute-form naming the endpoint", gcpReq("GET", "http://169.254.169.252/computeMetadata/v1/instance/zone"), []int{400}, nil},
	{"absolute-form naming another host", gcpReq("GET", "http://10.0.0.1/computeMetadata/v1/instance/zone"), []int{400}, nil},
	{"asterisk-form", gcpReq("OPTIONS", "*"), []int{400}, nil},
	{"CONNECT in authority-form", gcpReq("CONNECT", "169.254.169.252:80"), []int{400}, nil},
	{"CONNECT with a path", gcpReq("CONNECT", "/computeMetadata/v1/instance/zone"), []int{400}, nil},

	// Protocol switches.
	{"a websocket upgrade", gcpReq("GET", "/computeMetadata/v1/instance/zone", "Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="), []int{400}, nil},
	{"an h2c upgrade", gcpReq("GET", "/computeMetadata/v1/instance/zone", "Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA"), []int{400}, nil},
	{"an Upgrade header alone", gcpReq("GET", "/computeMetadata/v1/instance/zone", "Upgrade: websocket"), []int{400}, nil},
	{"the HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", []int{400}, nil},
	{"Expect: 100-continue", gcpReq("GET", "/computeMetadata/v1/instance/zone", "Expect: 100-continue"), []int{400}, nil},

	// Versions and Host.
	{"HTTP/1.0 without Host is served with the endpoint's Host",
		"GET /computeMetadata/v1/instance/zone HTTP/1.0\r\nMetadata-Flavor: Google\r\n\r\n",
		[]int{200}, []string{"GET /computeMetadata/v1/instance/zone"}},
	{"HTTP/1.1 without Host", "GET /computeMetadata/v1/instance/zone HTTP/1.1\r\nMetadata-Flavor: Google\r\n\r\n", []int{400}, nil},
	{"HTTP/0.9", "GET /computeMetadata/v1/instance/zone\r\n\r\n", []int{400}, nil},
	{"HTTP/1.7 is served as HTTP/1.1, forwarded as judged",
		"GET /computeMetadata/v1/instance/zone HTTP/1.7\r\nHost: metadata.google.internal\r\nMetadata-Flavor: Google\r\n\r\n",
		[]int{200}, []string{"GET /computeMetadata/v1/instance/zone"}},
	{"two Host headers", gcpReq("GET", "/computeMetadata/v1/instance/zone", "Host: 10.0.0.1"), []int{400}, nil},

	// Header size and header injection.
	{"a 20 KiB header", gcpReq("GET", "/computeMetadata/v1/instance/zone", "X-Pad: "+strings.Repeat("a", 20<<10)), []int{431}, nil},
	{"many headers past 16 KiB", gcpReq("GET", "/computeMetadata/v1/instance/zone", slices.Repeat([]string{"X-Pad: " + strings.Repeat("a", 1000)}, 17)...), []int{431}, nil},
	{"an 8 KiB header is still served", gcpReq("GET", "/computeMetadata/v1/instance/zone", "X-Pad: "+strings.Repeat("a", 8<<10)), []int{200}, []string{"GET /computeMetadata/v1/instance/zone"}},
	{"a bare CR in a header value", gcpReq("GET", "/computeMetadata/v1/instance/zone", "X-A: a\rX-Injected: 1"), []int{400}, nil},
	{"a NUL in a header value", gcpReq("GET", "/computeMetadata/v1/instance/zone", "X-A: a\x00b"), []int{400}, nil},
	// net/http unfolds it into the previous header's value (RFC 9112
	// allows that): what reaches the upstream is one X-A header.
	{"an obs-fold continuation line never becomes a header of its own",
		gcpReq("GET", "/computeMetadata/v1/instance/zone", "X-A: a", " X-Injected: 1"), []int{200}, []string{"GET /computeMetadata/v1/instance/zone"}},
	{"a space before the colon", gcpReq("GET", "/computeMetadata/v1/instance/zone", "Metadata-Flavor : Google"), []int{400}, nil},
	{"CRLF injected through the path", gcpReq("GET", "/computeMetadata/v1/instance/zone%0d%0aX-Injected:%201"), []int{400}, nil},
	{"X-Forwarded-For", gcpReq("GET", "/computeMetadata/v1/instance/zone", "X-Forwarded-For: 10.9.9.9"), []int{403}, nil},
	{"Forwarded", gcpReq("GET", "/computeMetadata/v1/instance/zone", "Forwarded: for=10.9.9.9"), []int{403}, nil},
	{"X-Forwarded-Host", gcpReq("GET", "/computeMetadata/v1/instance/zone", "X-Forwarded-Host: metadata"), []int{403}, nil},

	// Every path trick of docs/design.md, aimed at the token.
	{"the token itself", gcpReq("GET", token), []int{403}, nil},
	{"a percent-encoded letter", gcpReq("GET", saDir+"toke%6e"), []int{400}, nil},
	{"a dot segment", gcpReq("GET", saDir+"./token"), []int{400}, nil},
	{"a dot-dot segment", gcpReq("GET", "/computeMetadata/v1/instance/service-accounts/x/../default/token"), []int{400}, nil},
	{"encoded dots", gcpReq("GET", "/computeMetadata/v1/instance/service-accounts/x/%2e%2e/default/token"), []int{400}, nil},
	{"encoded slashes", gcpReq("GET", "/computeMetadata/v1/instance/service-accounts%2Fdefault%2Ftoken"), []int{400}, nil},
	{"double encoding", gcpReq("GET", "/computeMetadata/v1/instance/service-accounts%252Fdefault%252Ftoken"), []int{400}, nil},
	{"backslashes", gcpReq("GET", `/computeMetadata/v1/instance/service-accounts\default\token`), []int{400}, nil},
	{"a ;param", gcpReq("GET", saDir+"token;x=1"), []int{400}, nil},
	{"a ; segment", gcpReq("GET", "/computeMetadata/v1/instance/service-accounts/default;/token"), []int{400}, nil},
	{"an encoded NUL", gcpReq("GET", saDir+"token%00"), []int{400}, nil},
	{"a raw NUL", gcpReq("GET", saDir+"token\x00"), []int{400}, nil},
	{"overlong UTF-8 dots, encoded", gcpReq("GET", "/computeMetadata/v1/instance/service-accounts/x/%c0%ae%c0%ae/default/token"), []int{400}, nil},
	{"overlong UTF-8 dots, raw", gcpReq("GET", "/computeMetadata/v1/instance/service-accounts/x/\xc0\xae\xc0\xae/default/token"), []int{400}, nil},
	{"a double slash", gcpReq("GET", "/computeMetadata/v1/instance/service-accounts//default/token"), []int{400}, nil},
	{"a leading double slash", gcpReq("GET", "//computeMetadata/v1/instance/service-accounts/default/token"), []int{400}, nil},
	{"a fragment", gcpReq("GET", saDir+"token#x"), []int{400}, nil},
	{"the legacy v1beta1 API", gcpReq("GET", "/computeMetadata/v1beta1/instance/service-accounts/default/token"), []int{403}, nil},
	{"the legacy 0.1 API", gcpReq("GET", "/0.1/meta-data/service-accounts/default/acquire"), []int{403}, nil},
	// The built-in GCP patterns cover everything under a credential leaf
	// (*/token/**, kube-env/**), so a trailing slash is refused here rather
	// than trusting GCE to answer 404 for it.
	{"the token with a trailing slash", gcpReq("GET", token+"/"), []int{403}, nil},
	{"kube-env with a trailing slash", gcpReq("GET", "/computeMetadata/v1/instance/attributes/kube-env/"), []int{403}, nil},
	{"a different case is a different path, forwarded as judged",
		gcpReq("GET", saDir+"TOKEN"), []int{404}, []string{"GET " + saDir + "TOKEN"}},

	// Query tricks.
	{"recursive=true on a parent of the token is stripped",
		gcpReq("GET", "/computeMetadata/v1/instance/?recursive=true"), []int{200}, []string{"GET /computeMetadata/v1/instance/?recursive=true"}},
	// The root answers a plain listing even with recursive=true: a
	// recursive answer that is not JSON is refused whole, whatever it
	// holds, so that the refusal never tells whether a credential is in it.
	{"recursive=true on the root is a text dump, refused",
		gcpReq("GET", "/?recursive=true"), []int{502}, []string{"GET /?recursive=true"}},
	{"an encoded key is judged and forwarded decoded",
		gcpReq("GET", saDir+"?rec%75rsive=%74rue"), []int{200}, []string{"GET " + saDir + "?recursive=true"}},
	{"recursive alt=text holding a multi-line credential is refused",
		gcpReq("GET", "/computeMetadata/v1/instance/?recursive=true&alt=text"), []int{502}, []string{"GET /computeMetadata/v1/instance/?alt=text&recursive=true"}},
	{"a duplicate key", gcpReq("GET", "/computeMetadata/v1/instance/?recursive=false&recursive=true"), []int{400}, nil},
	{"a ; separator", gcpReq("GET", "/computeMetadata/v1/instance/?alt=json;recursive=true"), []int{400}, nil},
	{"an unknown key", gcpReq("GET", "/computeMetadata/v1/instance/?recursive=true&x=1"), []int{400}, nil},
	{"a query on the token", gcpReq("GET", token+"?alt=text"), []int{403}, nil},

	// Methods.
	{"POST", gcpReq("POST", "/computeMetadata/v1/instance/zone", "Content-Length: 0"), []int{405}, nil},
	{"DELETE", gcpReq("DELETE", "/computeMetadata/v1/instance/zone"), []int{405}, nil},
	{"PATCH", gcpReq("PATCH", "/computeMetadata/v1/instance/zone"), []int{405}, nil},
	{"OPTIONS", gcpReq("OPTIONS", "/computeMetadata/v1/instance/zone"), []int{405}, nil},
	{"TRACE", gcpReq("TRACE", "/computeMetadata/v1/instance/zone"), []int{405}, nil},
	{"a lower-case get", gcpReq("get", "/computeMetadata/v1/instance/zone"), []int{405}, nil},
	{"an invented method", gcpReq("FETCH", "/computeMetadata/v1/instance/zone"), []int{405}, nil},
	{"PUT outside guest attributes, which GCP does not serve", gcpReq("PUT", "/computeMetadata/v1/instance/zone", "Content-Length: 0"), []int{405}, nil},
	{"HEAD, which it does", gcpReq("HEAD", "/computeMetadata/v1/instance/zone"), []int{200}, []string{"HEAD /computeMetadata/v1/instance/zone"}},
}

// TestHostileRequestsThroughTheRealRedirect sends each attack as raw bytes
// from inside a pod, through the node's DNAT, and checks both what the pod
// got back and what reached the metadata server: nothing is forwarded as
// something other than what metaguard decided, and no credential leaks.
func TestHostileRequestsThroughTheRealRedirect(t *testing.T) {
	n := startNode(t, attackPolicy)
	web := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "web", Labels: map[string]string{"app": "web"}})
	for _, a := range hostileRequests {
		t.Run(a.name, func(t *testing.T) {
			n.resetCloud(fakecloud.GCP)
			resps, err := rawExchange(n.ctx, web, "169.254.169.252:80", a.raw, len(a.status))
			if err != nil {
				t.Fatal(err)
			}
			var got []int
			for _, r := range resps {
				got = append(got, r.status)
				for _, secret := range []string{"access_token", "KUBELET", "kube-env"} {
					// metaguard's own 403 names the path it refused.
					if strings.Contains(r.body, secret) && !strings.HasPrefix(r.body, "metaguard: denied") {
						t.Errorf("a response holds %q: %q", secret, r.body)
					}
				}
			}
			if !slices.Equal(got, a.status) {
				t.Errorf("statuses %v, want %v (bodies %q)", got, a.status, bodies(resps))
			}
			var fwd []string
			for _, r := range n.cloudRecords(fakecloud.GCP) {
				s := r.Method + " " + r.Path
				if r.RawQuery != "" {
					s += "?" + r.RawQuery
				}
				fwd = append(fwd, s)
				if r.Host != "metadata.google.internal" && r.Host != "169.254.169.252" {
					t.Errorf("forwarded with Host %q", r.Host)
				}
				for _, h := range []string{"X-Injected", "X-Forwarded-For", "Forwarded", "Upgrade"} {
					if _, ok := r.Header[h]; ok {
						t.Errorf("forwarded with %s", h)
					}
				}
			}
			if !slices.Equal(fwd, a.forwarded) {
				t.Errorf("the upstream received %q, want %q", fwd, a.forwarded)
			}
		})
	}
}

func bodies(rs []rawResponse) []string {
	var out []string
	for _, r := range rs {
		out = append(out, strings.TrimSpace(r.body))
	}
	return out
}

// TestAWSVersionAndCaseTricks: every IMDS version segment is as much a
// credential path as latest, and a listing never names iam/.
func TestAWSVersionAndCaseTricks(t *testing.T) {
	n := startNode(t, attackPolicy)
	web := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "web", Labels: map[string]string{"app": "web"}})
	cases := []struct {
		path   string
		status int
	}{
		{"/latest/meta-data/iam/security-credentials/", 403},
		{"/latest/meta-data/iam/info", 403},
		{"/latest/meta-data/iam/", 403},
		{"/latest/meta-data/iam", 403},
		{"/1.0/meta-data/iam/security-credentials/", 403},
		{"/2016-09-02/meta-data/iam/security-credentials/", 403},
		{"/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance", 403},
		{"/latest/meta-data/iam%2Fsecurity-credentials/", 400},
		{"/latest/meta-data/./iam/security-credentials/", 400},
		{"/latest/meta-data/placement/../iam/security-credentials/", 400},
		{"/latest/meta-data/IAM/security-credentials/", 404},
		{"/latest/user-data", 403},
	}
	for _, c := range cases {
		raw := "GET " + c.path + " HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n"
		resps, err := rawExchange(n.ctx, web, "169.254.169.254:80", raw, 1)
		if err != nil {
			t.Fatal(err)
		}
		if len(resps) != 1 || resps[0].status != c.status {
			t.Errorf("%s: %v, want %d", c.path, bodies(resps), c.status)
			continue
		}
		if strings.Contains(resps[0].body, "AccessKeyId") || strings.Contains(resps[0].body, "InstanceProfileArn") {
			t.Errorf("%s leaked credentials: %q", c.path, resps[0].body)
		}
	}
	r := n.get(web, "http://169.254.169.254/latest/meta-data/", nil)
	if r.status != 200 || strings.Contains(r.body, "iam") || !strings.Contains(r.body, "instance-id") {
		t.Errorf("listing: %d %q", r.status, r.body)
	}
}
