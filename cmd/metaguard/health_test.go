package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"metaguard.dev/metaguard/proxy"
)

func TestHealthReadinessAndMetricsEndpoints(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "metaguard_test_total", Help: "x"})
	reg.MustRegister(c)
	c.Inc()
	var synced atomic.Bool
	ready := func() []string {
		if !synced.Load() {
			return []string{"pod and namespace informers not synced", "redirect rules not in place"}
		}
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- proxy.ServeAdmin(ctx, ln, adminHandler(reg, ready), nil, slog.New(slog.DiscardHandler))
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serveMetrics: %v", err)
		}
	}()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + ln.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz = %d while serving", code)
	}
	code, body := get("/readyz")
	if code != 503 || !strings.Contains(body, "informers not synced") || !strings.Contains(body, "redirect rules not in place") {
		t.Errorf("/readyz before ready = %d %q, want 503 naming what is missing", code, body)
	}
	synced.Store(true)
	if code, _ := get("/readyz"); code != 200 {
		t.Errorf("/readyz when ready = %d", code)
	}
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, "metaguard_test_total 1") {
		t.Errorf("/metrics = %d %q", code, body)
	}
}
