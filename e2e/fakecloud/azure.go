package fakecloud

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The managed identities assigned to the fake VM. The system-assigned one
// answers when a token request names no identity; a user-assigned one is
// named by exactly one of its client id, object id or resource id.
const (
	AzureSystemClientID  = "00000000-0000-0000-0000-0000000000aa"
	AzureUserClientID1   = "00000000-0000-0000-0000-000000000001"
	AzureUserClientID2   = "00000000-0000-0000-0000-000000000002"
	AzureUserObjectID1   = "11111111-0000-0000-0000-000000000001"
	AzureUserResourceID1 = "/subscriptions/11111111-2222-3333-4444-555555555555/resourcegroups/metaguard-e2e/" +
		"providers/Microsoft.ManagedIdentity/userAssignedIdentities/billing"
)

type azureIdentity struct{ clientID, objectID, resourceID string }

var azureIdentities = []azureIdentity{
	{clientID: AzureSystemClientID, objectID: "11111111-0000-0000-0000-0000000000aa"},
	{clientID: AzureUserClientID1, objectID: AzureUserObjectID1, resourceID: AzureUserResourceID1},
	{clientID: AzureUserClientID2, objectID: "11111111-0000-0000-0000-000000000002",
		resourceID: "/subscriptions/11111111-2222-3333-4444-555555555555/resourcegroups/metaguard-e2e/" +
			"providers/Microsoft.ManagedIdentity/userAssignedIdentities/batch"},
}

// azureServer is the Server header IMDS answers with.
const azureServer = "IMDS/150.870.65.1854"

// azureVersions are API versions IMDS serves, oldest first (a part of the
// list in "Supported API versions" of the IMDS documentation, below).
var azureVersions = []string{
	"2017-03-01", "2017-04-02", "2017-08-01", "2017-10-01", "2017-12-01", "2018-02-01", "2018-04-02",
	"2018-10-01", "2019-02-01", "2019-03-11", "2019-04-30", "2019-06-01", "2019-06-04", "2019-08-01",
	"2019-08-15", "2019-11-01", "2020-06-01", "2020-07-15", "2020-09-01", "2020-10-01", "2020-12-01",
	"2021-01-01", "2021-02-01", "2021-03-01", "2021-05-01", "2021-10-01", "2021-11-01", "2021-11-15",
	"2021-12-13", "2023-07-01",
}

var azureInstance = map[string]any{
	"compute": map[string]any{
		"azEnvironment":     "AzurePublicCloud",
		"location":          "westeurope",
		"name":              "node-a",
		"osType":            "Linux",
		"resourceGroupName": "metaguard-e2e",
		"subscriptionId":    "11111111-2222-3333-4444-555555555555",
		"vmId":              "02aab8a4-74ef-476e-8182-f6d2ba4166a6",
		"vmSize":            "Standard_D2s_v5",
		"zone":              "1",
		"tagsList":          []any{map[string]any{"name": "env", "value": "e2e"}},
	},
	"network": map[string]any{
		"interface": []any{map[string]any{
			"ipv4":       map[string]any{"ipAddress": []any{map[string]any{"privateIpAddress": "172.31.0.1", "publicIpAddress": ""}}},
			"macAddress": "000D3AF806EC",
		}},
	},
}

// serveAzure imitates Azure IMDS at the HTTP level, from its documentation
// (https://learn.microsoft.com/azure/virtual-machines/instance-metadata-service,
// "Errors and debugging" and "Versioning"):
//
//   - GET only (405 otherwise), the "Metadata: true" header is required
//     and requests with X-Forwarded-For are refused (400), errors are JSON;
//   - every endpoint but /metadata/versions needs an api-version: without
//     one, or with one IMDS does not serve, the answer is 400 with the
//     newest versions;
//   - format=text is for leaves only.
//
// The 5 requests per second throttle is not modelled; Faults inject 429s.
func (s *Server) serveAzure(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Server", azureServer)
	switch {
	case forwarded(r):
		azureError(w, http.StatusBadRequest, map[string]any{"error": "Bad request. Forwarded requests are not allowed"})
		return
	case r.Method != http.MethodGet:
		azureError(w, http.StatusMethodNotAllowed, map[string]any{"error": "Bad request. Http method not allowed"})
		return
	case !strings.EqualFold(r.Header.Get("Metadata"), "true"):
		azureError(w, http.StatusBadRequest, map[string]any{"error": "Bad request. Required metadata header not specified"})
		return
	}
	q := r.URL.Query()
	if r.URL.Path == "/metadata/versions" {
		s.azureJSON(w, r, map[string]any{"apiVersions": azureVersions})
		return
	}
	if v := q.Get("api-version"); v == "" || !slices.Contains(azureVersions, v) {
		newest := slices.Clone(azureVersions[len(azureVersions)-3:])
		slices.Reverse(newest)
		azureError(w, http.StatusBadRequest, map[string]any{
			"error":           "Bad request. api-version is invalid or was not specified in the request. For more information refer to aka.ms/azureimds",
			"newest-versions": newest,
		})
		return
	}
	switch {
	case r.URL.Path == "/metadata/identity/oauth2/token":
		s.azureToken(w, r)
	case r.URL.Path == "/metadata/instance" || strings.HasPrefix(r.URL.Path, "/metadata/instance/"):
		s.azureInstanceData(w, r)
	default:
		azureError(w, http.StatusNotFound, map[string]any{"error": "Not found"})
	}
}

func (s *Server) azureInstanceData(w http.ResponseWriter, r *http.Request) {
	var v any = azureInstance
	rest := strings.Trim(strings.TrimPrefix(r.URL.Path, "/metadata/instance"), "/")
	if rest != "" {
		for _, seg := range strings.Split(rest, "/") {
			v = azureChild(v, seg)
			if v == nil {
				azureError(w, http.StatusNotFound, map[string]any{"error": "Not found"})
				return
			}
		}
	}
	if r.URL.Query().Get("format") == "text" {
		switch v.(type) {
		case map[string]any, []any:
			azureError(w, http.StatusBadRequest, map[string]any{"error": "Bad request. Format text is only supported for leaf nodes"})
		default:
			s.writeBody(w, r, "text/plain; charset=utf-8", []byte(fmt.Sprint(v)), "")
		}
		return
	}
	s.azureJSON(w, r, v)
}

func azureChild(v any, seg string) any {
	switch v := v.(type) {
	case map[string]any:
		return v[seg]
	case []any:
		i, err := strconv.Atoi(seg)
		if err != nil || i < 0 || i >= len(v) {
			return nil
		}
		return v[i]
	}
	return nil
}

// azureToken is the managed identity token endpoint, from
// https://learn.microsoft.com/entra/identity/managed-identities-azure-resources/how-to-use-vm-token
// ("Get a token using HTTP" and "Error handling"): resource is required; a
// user-assigned identity is chosen by client_id, object_id or msi_res_id;
// an identity the VM does not have is 400 invalid_request "Identity not
// found", a resource Entra ID does not know is 400 invalid_resource; the
// token document's numbers are strings.
func (s *Server) azureToken(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	resource := q.Get("resource")
	if resource == "" {
		azureError(w, http.StatusBadRequest, map[string]any{
			"error": "invalid_request", "error_description": "Required query variable 'resource' is missing",
		})
		return
	}
	if !strings.HasPrefix(resource, "https://") && !strings.HasPrefix(resource, "api://") {
		azureError(w, http.StatusBadRequest, map[string]any{
			"error": "invalid_resource", "error_description": "AADSTS500011: The resource principal named " + resource + " was not found in the tenant.",
		})
		return
	}
	var selectors []string
	for _, k := range []string{"client_id", "object_id", "msi_res_id"} {
		if q.Has(k) {
			selectors = append(selectors, k)
		}
	}
	if len(selectors) > 1 {
		azureError(w, http.StatusBadRequest, map[string]any{
			"error": "invalid_request", "error_description": "Only one of client_id, object_id and msi_res_id may be given",
		})
		return
	}
	id, ok := azureIdentities[0], true
	if len(selectors) == 1 {
		id, ok = findIdentity(selectors[0], q.Get(selectors[0]))
	}
	if !ok {
		azureError(w, http.StatusBadRequest, map[string]any{
			"error": "invalid_request", "error_description": "Identity not found",
		})
		return
	}
	now := time.Now()
	s.azureJSON(w, r, map[string]string{
		"access_token":   "eyJ0eXAiOiJKV1QifQ.e2e-fake-azure-token-for-" + id.clientID + ".c2ln",
		"client_id":      id.clientID,
		"expires_in":     "86399",
		"expires_on":     strconv.FormatInt(now.Add(86399*time.Second).Unix(), 10),
		"ext_expires_in": "86399",
		"not_before":     strconv.FormatInt(now.Unix(), 10),
		"refresh_token":  "",
		"resource":       resource,
		"token_type":     "Bearer",
	})
}

func findIdentity(selector, value string) (azureIdentity, bool) {
	for _, id := range azureIdentities {
		switch {
		case selector == "client_id" && strings.EqualFold(id.clientID, value),
			selector == "object_id" && strings.EqualFold(id.objectID, value),
			selector == "msi_res_id" && id.resourceID != "" && strings.EqualFold(id.resourceID, value):
			return id, true
		}
	}
	return azureIdentity{}, false
}

func (s *Server) azureJSON(w http.ResponseWriter, r *http.Request, v any) {
	b, _ := json.Marshal(v)
	s.writeBody(w, r, "application/json; charset=utf-8", append(b, '\n'), "")
}

func azureError(w http.ResponseWriter, code int, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}
