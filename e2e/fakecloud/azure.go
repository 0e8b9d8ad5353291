package fakecloud

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Client ids of the managed identities assigned to the fake VM. The
// system-assigned one answers when a token request names no identity.
const (
	AzureSystemClientID = "00000000-0000-0000-0000-0000000000aa"
	AzureUserClientID1  = "00000000-0000-0000-0000-000000000001"
	AzureUserClientID2  = "00000000-0000-0000-0000-000000000002"
)

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

// serveAzure imitates Azure IMDS at the HTTP level: GET only, the
// "Metadata: true" header and an api-version are required, forwarded
// requests are refused, and errors are JSON.
func serveAzure(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Server", "IMDS/150.870.65.1854")
	switch {
	case forwarded(r):
		azureError(w, http.StatusBadRequest, map[string]any{"error": "Bad request. Forwarded requests are not allowed"})
		return
	case r.Method != http.MethodGet:
		azureError(w, http.StatusMethodNotAllowed, map[string]any{"error": "Bad request. Http method not allowed"})
		return
	case r.Header.Get("Metadata") != "true":
		azureError(w, http.StatusBadRequest, map[string]any{"error": "Bad request. Required metadata header not specified"})
		return
	}
	q := r.URL.Query()
	if r.URL.Path == "/metadata/versions" {
		azureJSON(w, map[string]any{"apiVersions": []string{"2018-02-01", "2021-02-01", "2023-07-01"}})
		return
	}
	if q.Get("api-version") == "" {
		azureError(w, http.StatusBadRequest, map[string]any{
			"error":           "Bad request. api-version was not specified in the request. For more information refer to aka.ms/azureimds",
			"newest-versions": []string{"2023-07-01", "2021-02-01", "2018-02-01"},
		})
		return
	}
	switch {
	case r.URL.Path == "/metadata/identity/oauth2/token":
		azureToken(w, r)
	case r.URL.Path == "/metadata/instance" || strings.HasPrefix(r.URL.Path, "/metadata/instance/"):
		azureInstanceData(w, r)
	default:
		azureError(w, http.StatusNotFound, map[string]any{"error": "Not found"})
	}
}

func azureInstanceData(w http.ResponseWriter, r *http.Request) {
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
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			fmt.Fprint(w, v)
		}
		return
	}
	azureJSON(w, v)
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

func azureToken(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	resource := q.Get("resource")
	if resource == "" {
		azureError(w, http.StatusBadRequest, map[string]any{
			"error": "invalid_request", "error_description": "Required query variable 'resource' is missing",
		})
		return
	}
	clientID := q.Get("client_id")
	switch clientID {
	case "":
		clientID = AzureSystemClientID
	case AzureSystemClientID, AzureUserClientID1, AzureUserClientID2:
	default:
		azureError(w, http.StatusBadRequest, map[string]any{
			"error": "invalid_request", "error_description": "Identity not found",
		})
		return
	}
	now := time.Now()
	azureJSON(w, map[string]string{
		"access_token":   "eyJ0eXAiOiJKV1QifQ.e2e-fake-azure-token-for-" + clientID + ".c2ln",
		"client_id":      clientID,
		"expires_in":     "86399",
		"expires_on":     strconv.FormatInt(now.Add(24*time.Hour).Unix(), 10),
		"ext_expires_in": "86399",
		"not_before":     strconv.FormatInt(now.Unix(), 10),
		"resource":       resource,
		"token_type":     "Bearer",
	})
}

func azureJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	_ = json.NewEncoder(w).Encode(v)
}

func azureError(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
