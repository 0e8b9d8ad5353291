package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"metaguard.dev/metaguard/e2e/sandbox"
)

// metricsAddr is metaguard's default --metrics-listen, seen from the node.
const metricsAddr = "127.0.0.1:9181"

// startMetaguard runs metaguard on the node with the load policy. Rules
// go on exit, so that rows 1 and 2 of the next round see none.
func (b *bench) startMetaguard(ctx context.Context, audit string, extra ...string) (*sandbox.Process, error) {
	args := append([]string{"--config=" + b.policy, "--audit-log=" + audit, "--cleanup-on-exit=true", "--log-level=warn"}, extra...)
	if b.iptable == "iptables-nft" {
		args = append(args, "--iptables-mode=nft")
	}
	return b.s.StartMetaguard(ctx, args...)
}

// stopMetaguard stops it and checks that its rules went with it.
func (b *bench) stopMetaguard(ctx context.Context, mg *sandbox.Process) error {
	if err := mg.Stop(); err != nil {
		return err
	}
	out, err := b.s.ExecInNode(ctx, b.iptable+"-save", "-t", "nat")
	if err != nil {
		return err
	}
	if strings.Contains(string(out), "METAGUARD") {
		return fmt.Errorf("metaguard's rules survived its exit with --cleanup-on-exit:\n%s", out)
	}
	return nil
}

// scrapeMetrics reads /metrics every second, as a Prometheus would, until
// the returned stop is called.
func (b *bench) scrapeMetrics(ctx context.Context) (stop func()) {
	client := b.s.NodeHTTPClient()
	client.Timeout = 5 * time.Second
	return every(ctx, time.Second, func() {
		resp, err := client.Get("http://" + metricsAddr + "/metrics")
		if err != nil {
			if ctx.Err() == nil {
				b.logf("scraping /metrics: %v", err)
			}
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	})
}
