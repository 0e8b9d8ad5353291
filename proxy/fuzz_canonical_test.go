package proxy

import (
	"bufio"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"testing"

	"metaguard.dev/metaguard/proxy/policy"
)

// canonicalFuzzPolicy has one endpoint of every flavor.
const canonicalFuzzPolicy = `
apiVersion: metaguard.dev/v1alpha1
kind: Policy
endpoints:
  - {name: aws, address: "169.254.169.254:80", flavor: aws}
  - {name: gcp, address: "169.254.169.252:80", flavor: gcp}
  - {name: azure, address: "169.254.169.251:80", flavor: azure}
  - {name: generic, address: "192.168.100.21:32000", flavor: generic}
rules: []
`

// FuzzCanonicalize works at the level of the function every request goes
// through first: whatever the request line and header, Canonicalize
// either refuses with 400, 405 or 414, or returns a request whose path is
// canonical and byte for byte the request's own, whose query holds only
// known keys once each and re-encodes to the same values, and which is
// exactly what the forwarder will put on the wire. It is deterministic.
func FuzzCanonicalize(f *testing.F) {
	for _, s := range []struct{ method, target, header string }{
		{"GET", "/computeMetadata/v1/instance/?recursive=true&alt=text", "Metadata-Flavor: Google"},
		{"GET", "/computeMetadata/v1/instance/?rec%75rsive=%74rue", ""},
		{"GET", "/latest/meta-data/iam/security-credentials/", ""},
		{"PUT", "/latest/api/token", "X-aws-ec2-metadata-token-ttl-seconds: 21600"},
		{"GET", "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net", "Metadata: true"},
		{"GET", "/a?b=1;c=2", ""},
		{"GET", "/a?b=1&b=2", ""},
		{"GET", "/a?%zz=1", ""},
		{"GET", "/a%2Fb", ""},
		{"GET", "http://169.254.169.254/a", ""},
		{"CONNECT", "169.254.169.254:80", ""},
		{"GET", "/a", "Transfer-Encoding: chunked"},
		{"GET", "/a", "Content-Length: 3"},
		{"GET", "/a", "Connection: keep-alive, Upgrade"},
		{"GET", "/a", "Expect: 100-continue"},
		{"OPTIONS", "*", ""},
		{"get", "/a", ""},
		{"GET", "/a?x=%00", ""},
		{"GET", "/a?x=" + strings.Repeat("y", 3000), ""},
	} {
		for ep := uint8(0); ep < 4; ep++ {
			f.Add(s.method, s.target, s.header, ep)
		}
	}
	pol, err := policy.Parse("fuzz", []byte(canonicalFuzzPolicy))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, method, target, header string, which uint8) {
		raw := method + " " + target + " HTTP/1.1\r\nHost: 169.254.169.254\r\n"
		if header != "" {
			raw += header + "\r\n"
		}
		raw += "\r\n"
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
		if err != nil {
			return // net/http never hands this to a handler
		}
		ep := pol.Endpoints()[int(which)%len(pol.Endpoints())]
		c, rerr := Canonicalize(req, ep)
		c2, rerr2 := Canonicalize(req, ep)
		if !reflect.DeepEqual(c, c2) || !reflect.DeepEqual(rerr, rerr2) {
			t.Fatalf("not deterministic: %+v %v, then %+v %v", c, rerr, c2, rerr2)
		}
		if (c == nil) == (rerr == nil) {
			t.Fatalf("Canonicalize returned %+v and %v: want exactly one", c, rerr)
		}
		if rerr != nil {
			if !slices.Contains([]int{400, 405, 414}, rerr.Status) {
				t.Fatalf("refused with status %d (%s)", rerr.Status, rerr.Reason)
			}
			return
		}
		rawPath, rawQuery, _ := strings.Cut(req.RequestURI, "?")
		switch {
		case c.Path != rawPath:
			t.Fatalf("judged path %q is not the request's %q", c.Path, rawPath)
		case policy.CanonicalPath(c.Path) != "":
			t.Fatalf("accepted non-canonical path %q", c.Path)
		case c.Method != req.Method || !ep.MethodAllowed(c.Method):
			t.Fatalf("accepted method %q on %s", c.Method, ep.Flavor)
		case len(req.TransferEncoding) > 0 || len(req.Header["Upgrade"]) > 0 || len(req.Header["Expect"]) > 0:
			t.Fatalf("accepted a request with framing or protocol headers: %q", header)
		case (c.Method == "GET" || c.Method == "HEAD") && req.ContentLength != 0:
			t.Fatalf("accepted a body on %s", c.Method)
		}
		if known := ep.QueryKeys(); known == nil {
			if c.RawQuery != rawQuery {
				t.Fatalf("generic endpoint: query %q forwarded as %q", rawQuery, c.RawQuery)
			}
		} else {
			back, err := url.ParseQuery(c.RawQuery)
			if err != nil || (len(back) > 0 || len(c.Query) > 0) && !reflect.DeepEqual(back, c.Query) {
				t.Fatalf("forwarded query %q reads back as %v (%v), judged %v", c.RawQuery, back, err, c.Query)
			}
			var keys []string
			for k, vs := range c.Query {
				if !known[k] || len(vs) != 1 {
					t.Fatalf("accepted query key %q with values %q", k, vs)
				}
				keys = append(keys, k)
			}
			slices.Sort(keys)
			if !slices.Equal(keys, c.QueryKeys) {
				t.Fatalf("QueryKeys %v, query has %v", c.QueryKeys, keys)
			}
		}
		wire := (&url.URL{Path: c.Path, RawQuery: c.RawQuery}).RequestURI()
		want := c.Path
		if c.RawQuery != "" {
			want += "?" + c.RawQuery
		}
		if wire != want {
			t.Fatalf("judged %q, the wire would carry %q", want, wire)
		}
	})
}
