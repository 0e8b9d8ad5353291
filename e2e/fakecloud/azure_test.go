package fakecloud

import (
	"strings"
	"testing"
)

func TestAzure(t *testing.T) {
	_, ts := newTestServer(t, Azure)
	md := map[string]string{"Metadata": "true"}
	const tok = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/"
	tests := []struct {
		name     string
		method   string
		target   string
		header   map[string]string
		status   int
		contains string
	}{
		{name: "a request without the Metadata header is refused", target: "/metadata/instance?api-version=2021-02-01", status: 400, contains: "Required metadata header"},
		{name: "a request without api-version is refused with the newest versions", target: "/metadata/instance", header: md, status: 400, contains: `"newest-versions":["2023-07-01","2021-12-13","2021-11-15"]`},
		{name: "an api-version IMDS does not serve is refused", target: "/metadata/instance?api-version=2099-01-01", header: md, status: 400, contains: "api-version is invalid"},
		{name: "the versions endpoint needs no api-version", target: "/metadata/versions", header: md, status: 200, contains: `"2018-02-01"`},
		{name: "a forwarded request is refused", target: "/metadata/instance?api-version=2021-02-01", header: with(md, "X-Forwarded-For", "10.0.0.1"), status: 400},
		{name: "POST is refused", method: "POST", target: "/metadata/instance?api-version=2021-02-01", header: md, status: 405},
		{name: "HEAD is refused", method: "HEAD", target: "/metadata/instance?api-version=2021-02-01", header: md, status: 405},
		{name: "the instance document is JSON", target: "/metadata/instance?api-version=2021-02-01", header: md, status: 200, contains: `"vmId":"02aab8a4`},
		{name: "a leaf can be read as text", target: "/metadata/instance/compute/location?api-version=2021-02-01&format=text", header: md, status: 200, contains: "westeurope"},
		{name: "a directory cannot be read as text", target: "/metadata/instance/compute?api-version=2021-02-01&format=text", header: md, status: 400, contains: "leaf"},
		{name: "an unknown path is 404", target: "/metadata/nope?api-version=2021-02-01", header: md, status: 404},
		{name: "a token names the system identity by default", target: tok, header: md, status: 200, contains: AzureSystemClientID},
		{name: "a token document has string numbers", target: tok, header: md, status: 200, contains: `"expires_in":"86399"`},
		{name: "a user-assigned identity by client id", target: tok + "&client_id=" + AzureUserClientID1, header: md, status: 200, contains: `"client_id":"` + AzureUserClientID1},
		{name: "a user-assigned identity by object id", target: tok + "&object_id=" + AzureUserObjectID1, header: md, status: 200, contains: `"client_id":"` + AzureUserClientID1},
		{name: "a user-assigned identity by resource id", target: tok + "&msi_res_id=" + AzureUserResourceID1, header: md, status: 200, contains: `"client_id":"` + AzureUserClientID1},
		{name: "two identity selectors are refused", target: tok + "&client_id=" + AzureUserClientID1 + "&object_id=" + AzureUserObjectID1, header: md, status: 400, contains: "invalid_request"},
		{name: "an unknown identity is refused", target: tok + "&client_id=nope", header: md, status: 400, contains: `"error_description":"Identity not found"`},
		{name: "a token without resource is refused", target: "/metadata/identity/oauth2/token?api-version=2018-02-01", header: md, status: 400, contains: "resource"},
		{name: "a resource Entra ID does not know is refused", target: "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=nope", header: md, status: 400, contains: "invalid_resource"},
		{name: "a token request without api-version is refused", target: "/metadata/identity/oauth2/token?resource=https://vault.azure.net", header: md, status: 400, contains: "api-version"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := tt.method
			if m == "" {
				m = "GET"
			}
			a := get(t, ts, m, tt.target, tt.header)
			if a.status != tt.status || !strings.Contains(a.body, tt.contains) {
				t.Fatalf("got %d %q, want %d containing %q", a.status, a.body, tt.status, tt.contains)
			}
			if a.header.Get("Server") != azureServer {
				t.Errorf("Server = %q", a.header.Get("Server"))
			}
			if m != "HEAD" && !strings.HasPrefix(a.header.Get("Content-Type"), "application/json") && !strings.Contains(tt.target, "format=text") {
				t.Errorf("Content-Type = %q, want JSON", a.header.Get("Content-Type"))
			}
		})
	}
}
