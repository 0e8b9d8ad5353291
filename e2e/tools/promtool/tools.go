//go:build tools

// Package tools pins promtool, which tests the shipped Prometheus alerting
// rules with its rule unit tests.
package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"
