package main

import (
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
)

// revision is the commit the binary was built from, set at build time with
// -ldflags "-X main.revision=..." (the Makefile and Dockerfile do).
var revision = "unknown"

// buildInfo is metaguard_build_info: which binary runs on a node, so a
// rollout that stalled half way shows up on a dashboard.
func buildInfo() prometheus.Collector {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "metaguard_build_info",
		Help: "Always 1; the labels say which metaguard build runs.",
	}, []string{"version", "revision", "goversion"})
	g.WithLabelValues(version, revision, runtime.Version()).Set(1)
	return g
}
