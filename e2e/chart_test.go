//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"metaguard.dev/metaguard/deploy/render"
	"metaguard.dev/metaguard/e2e/sandbox"
	"metaguard.dev/metaguard/proxy/policy"
)

const chartDir = "../charts/metaguard"

// chartValues are the values an e2e applies the chart with: a namespace of
// its own (Helm installs into an existing one; the sandbox has none).
func chartValues(extra map[string]any) map[string]any {
	v := map[string]any{"namespace": map[string]any{"create": true}}
	for k, x := range extra {
		v[k] = x
	}
	return v
}

func applyChart(t *testing.T, ctx context.Context, s *sandbox.Sandbox, values map[string]any) {
	t.Helper()
	m, err := render.Manifest(chartDir, values)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Apply(ctx, []byte(m)); err != nil {
		t.Fatalf("applying the chart with %v: %v", values, err)
	}
}

// TestChartOnARealAPIServer applies every preset of the chart, as `helm
// template | kubectl apply --server-side` would, to a real kube-apiserver:
// it validates every field of every object against the API's own schema
// (server-side apply refuses unknown fields) and admission, and shows the
// presets replace one another cleanly.
func TestChartOnARealAPIServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s := sandbox.StartT(t, sandbox.Options{})
	client := s.AdminClient()

	for _, c := range []struct {
		preset    string
		endpoints int
	}{
		{"", 1}, {"aws", 2}, {"gcp", 2}, {"azure", 3},
	} {
		t.Run(fmt.Sprintf("preset %q is accepted and applied", c.preset), func(t *testing.T) {
			values := chartValues(map[string]any{"preset": c.preset, "updateStrategy": map[string]any{"maxUnavailable": "10%"}})
			applyChart(t, ctx, s, values)
			// Twice: a re-apply of the same render changes nothing and is
			// accepted, as every helm upgrade is.
			applyChart(t, ctx, s, values)
			ds, err := client.AppsV1().DaemonSets(render.Namespace).Get(ctx, "metaguard", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if ds.Spec.UpdateStrategy.RollingUpdate.MaxUnavailable.String() != "10%" {
				t.Errorf("maxUnavailable %v", ds.Spec.UpdateStrategy.RollingUpdate.MaxUnavailable)
			}
			if !slices.Contains(ds.Spec.Template.Spec.Containers[0].Args, "--listen=:8169") {
				t.Errorf("args %q", ds.Spec.Template.Spec.Containers[0].Args)
			}
			cm, err := client.CoreV1().ConfigMaps(render.Namespace).Get(ctx, "metaguard-policy", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			pol, err := policy.Parse("applied ConfigMap", []byte(cm.Data["policy.yaml"]))
			if err != nil {
				t.Fatalf("the applied policy does not validate: %v", err)
			}
			if n := len(pol.Endpoints()); n != c.endpoints {
				t.Errorf("the applied policy has %d endpoints, want %d", n, c.endpoints)
			}
		})
	}

	t.Run("the chart with every feature on is accepted", func(t *testing.T) {
		applyChart(t, ctx, s, chartValues(map[string]any{
			"preset":    "aws",
			"nodeTaint": map[string]any{"enabled": true},
			"metrics":   map[string]any{"dashboard": map[string]any{"enabled": true}},
			"extraArgs": []any{"--identity-wait=2s"},
		}))
	})
}
