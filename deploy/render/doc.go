// Package render renders the metaguard Helm chart with the Helm SDK, as
// `helm template` and `helm lint` would, for the tests that keep deploy/
// and the chart one source of truth and for the e2e tests that apply the
// chart to a real API server.
//
// It is test tooling: nothing in the metaguard binary imports it. Its
// surface is Manifest, Files, Lint and the Release defaults.
package render
