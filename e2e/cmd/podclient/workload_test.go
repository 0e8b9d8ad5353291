package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func TestGetReportsWhatTheContainerSaw(t *testing.T) {
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/denied" {
			http.Error(w, "denied by metaguard", http.StatusForbidden)
			return
		}
		_, _ = w.Write([]byte("metadata server"))
	}))
	defer ts.Close()
	var out bytes.Buffer
	if code := run([]string{"get", ts.URL + "/ok"}, &out); code != 0 {
		t.Fatalf("exit %d", code)
	}
	var got result
	if err := json.Unmarshal(out.Bytes(), &got); err != nil || !got.OK || got.Status != 200 || got.Body != "metadata server" {
		t.Fatalf("get /ok: %+v (%v)", got, err)
	}
	if res := get(t.Context(), ts.URL+"/denied"); res.OK || res.Status != 403 {
		t.Fatalf("get /denied: %+v, want status 403 and not ok", res)
	}
	ts.Close()
	if res := get(t.Context(), ts.URL+"/ok"); res.OK || res.Error == "" {
		t.Fatalf("get from a closed server: %+v, want a connection error", res)
	}
}

func TestProbePrintsOneLinePerAttempt(t *testing.T) {
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "denied", http.StatusForbidden)
	}))
	defer ts.Close()
	var out bytes.Buffer
	probe(ts.URL, time.Millisecond, 3, &out)
	sc := bufio.NewScanner(&out)
	n := 0
	for sc.Scan() {
		var line struct {
			N      int `json:"n"`
			Status int `json:"status"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil || line.N != n || line.Status != 403 {
			t.Fatalf("line %d: %s (%v)", n, sc.Text(), err)
		}
		n++
	}
	if n != 3 {
		t.Fatalf("%d lines, want 3", n)
	}
}
