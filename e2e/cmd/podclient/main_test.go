package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

// fakeIMDS answers like IMDSv2: a token on PUT, metadata with the token,
// and 403 on anything under iam/ (what metaguard does to a stripped pod).
func fakeIMDS(t *testing.T) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /latest/api/token", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", "21600")
		_, _ = io.WriteString(w, "token")
	})
	mux.HandleFunc("GET /latest/meta-data/instance-id", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Aws-Ec2-Metadata-Token") != "token" {
			http.Error(w, "no token", http.StatusUnauthorized)
			return
		}
		_, _ = io.WriteString(w, "i-0123")
	})
	mux.HandleFunc("GET /latest/meta-data/iam/", func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "denied by metaguard", http.StatusForbidden)
	})
	ts := httptest.NewServer(mux)
	t.Cleanup(ts.Close)
	return ts
}

func TestRun(t *testing.T) {
	ts := fakeIMDS(t)
	tests := []struct {
		name string
		args []string
		code int
		want result
	}{
		{name: "metadata read through the SDK is printed", args: []string{"-endpoint", ts.URL, "aws-get", "instance-id"}, want: result{OK: true, Body: "i-0123"}},
		{name: "a refused read keeps the status the SDK saw", args: []string{"-endpoint", ts.URL, "aws-creds"}, want: result{Status: 403}},
		{name: "an unknown command is a usage error", args: []string{"nope"}, code: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			if code := run(tt.args, &out); code != tt.code {
				t.Fatalf("exit %d, want %d", code, tt.code)
			}
			if tt.code != 0 {
				return
			}
			var got result
			if err := json.Unmarshal(out.Bytes(), &got); err != nil {
				t.Fatalf("output %q: %v", out.String(), err)
			}
			if got.OK != tt.want.OK || got.Status != tt.want.Status || got.Body != tt.want.Body {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}
