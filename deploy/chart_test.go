package deploy

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"metaguard.dev/metaguard/deploy/render"
)

// The chart is the one source of truth: deploy/ holds what it renders.
// `make manifests` (go test ./deploy -run TestDeployIsRenderedFromChart
// -update) rewrites the generated files; this test fails when a committed
// file differs from a fresh render.

var update = flag.Bool("update", false, "rewrite the files of deploy/ that are rendered from charts/metaguard")

const chartDir = "../charts/metaguard"

// generatedHeader starts every manifest rendered from the chart.
const generatedHeader = "# Generated from charts/metaguard by `make manifests`: edit the chart, not this file.\n"

// kustomizeValues are the values deploy/ is rendered with: the chart's
// defaults, plus the Namespace (Helm installs into an existing one) and
// without Helm's own labels.
func kustomizeValues(extra map[string]any) map[string]any {
	v := map[string]any{"namespace": map[string]any{"create": true}, "standardLabels": false}
	for k, x := range extra {
		v[k] = x
	}
	return v
}

// generated lists every file of deploy/ that comes from the chart: a
// template rendered with values, or a chart file copied as it is.
type generated struct {
	path     string         // under deploy/
	values   map[string]any // nil: copied from file
	template string         // under templates/
	file     string         // under charts/metaguard/
}

var generatedFiles = []generated{
	{path: "base/namespace.yaml", values: kustomizeValues(nil), template: "namespace.yaml"},
	{path: "base/serviceaccount.yaml", values: kustomizeValues(nil), template: "serviceaccount.yaml"},
	{path: "base/rbac.yaml", values: kustomizeValues(nil), template: "rbac.yaml"},
	{path: "base/configmap.yaml", values: kustomizeValues(nil), template: "configmap.yaml"},
	{path: "base/daemonset.yaml", values: kustomizeValues(nil), template: "daemonset.yaml"},
	{path: "components/node-taint/node-taint.yaml", values: kustomizeValues(map[string]any{"nodeTaint": map[string]any{"enabled": true}}), template: "node-taint.yaml"},
	{path: "components/monitoring/monitoring.yaml", values: kustomizeValues(map[string]any{"metrics": monitoringKit}), template: "monitoring.yaml"},
	{path: "overlays/gcp/resourcequota.yaml", values: kustomizeValues(map[string]any{"preset": "gcp"}), template: "resourcequota.yaml"},
	{path: "overlays/aws/policy.yaml", file: "files/policies/aws.yaml"},
	{path: "overlays/gcp/policy.yaml", file: "files/policies/gcp.yaml"},
	{path: "overlays/azure/policy.yaml", file: "files/policies/azure.yaml"},
}

// monitoringKit is the metrics values deploy/components/monitoring is
// rendered with.
var monitoringKit = map[string]any{
	"podMonitor":     map[string]any{"enabled": true},
	"prometheusRule": map[string]any{"enabled": true},
	"dashboard":      map[string]any{"enabled": true},
}

func (g generated) want(t *testing.T) []byte {
	t.Helper()
	if g.values == nil {
		b, err := os.ReadFile(filepath.Join(chartDir, g.file))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	files, err := render.Files(chartDir, g.values)
	if err != nil {
		t.Fatal(err)
	}
	body, ok := files[g.template]
	if !ok {
		t.Fatalf("templates/%s renders nothing with %v", g.template, g.values)
	}
	return []byte(generatedHeader + body)
}

func TestDeployIsRenderedFromChart(t *testing.T) {
	for _, g := range generatedFiles {
		want := g.want(t)
		path := g.path
		if *update {
			if err := os.WriteFile(path, want, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("deploy/%s differs from a fresh render of the chart; run `make manifests` (edit the chart, not the file)", path)
		}
	}
	t.Run("every manifest of deploy/ that names the generated header is in the list", func(t *testing.T) {
		err := filepath.WalkDir(".", func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || filepath.Ext(p) != ".yaml" {
				return err
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if bytes.HasPrefix(b, []byte(generatedHeader)) &&
				!slices.ContainsFunc(generatedFiles, func(g generated) bool { return g.path == p }) {
				t.Errorf("%s says it is generated, but nothing generates it", p)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

func TestChartLints(t *testing.T) {
	for _, c := range []struct {
		name   string
		values map[string]any
	}{
		{"with its defaults", nil},
		{"with every preset and feature on", map[string]any{"preset": "gcp", "nodeTaint": map[string]any{"enabled": true},
			"updateStrategy": map[string]any{"maxUnavailable": "10%"}, "extraArgs": []any{"--identity-wait=2s"}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if msgs := render.Lint(chartDir, c.values); len(msgs) > 0 {
				t.Errorf("helm lint --strict:\n%s", strings.Join(msgs, "\n"))
			}
		})
	}
}

func TestChartRefusesBadValues(t *testing.T) {
	for _, c := range []struct {
		name   string
		values map[string]any
	}{
		{"an unknown preset", map[string]any{"preset": "openstack"}},
		{"a maxUnavailable that is neither a number nor a percentage", map[string]any{"updateStrategy": map[string]any{"maxUnavailable": "ten"}}},
		{"a maxUnavailable of 0, which never rolls out", map[string]any{"updateStrategy": map[string]any{"maxUnavailable": 0}}},
		{"a misspelt top-level value", map[string]any{"nodeTaints": map[string]any{"enabled": true}}},
		{"an image digest that is not a sha256", map[string]any{"image": map[string]any{"digest": "latest"}}},
		{"an extra argument that is not a flag", map[string]any{"extraArgs": []any{"cleanup"}}},
	} {
		t.Run(c.name+" is refused by the schema", func(t *testing.T) {
			_, err := render.Manifest(chartDir, c.values)
			if err == nil || !strings.Contains(err.Error(), "values don't meet the specifications of the schema") {
				t.Errorf("values %v: %v, want the schema's refusal", c.values, err)
			}
		})
	}
}
