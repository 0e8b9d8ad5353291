package sandbox

import (
	"os"
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"
)

func TestTheDaemonSetsGoRuntimeSettingsAreFound(t *testing.T) {
	b, err := os.ReadFile("../../deploy/base/daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var ds appsv1.DaemonSet
	if err := yaml.Unmarshal(b, &ds); err != nil {
		t.Fatal(err)
	}
	env := goRuntimeEnv(ds.Spec.Template.Spec)
	for _, want := range []string{"GOGC=400", "GOMEMLIMIT=32MiB", "GOMAXPROCS=1"} {
		if !slices.Contains(env, want) {
			t.Errorf("env %q lacks %s", env, want)
		}
	}
	// Only literal GO* values: NODE_NAME and HOST_IP come from the
	// downward API, which the sandbox answers with flags instead.
	for _, e := range env {
		if e[:2] != "GO" {
			t.Errorf("env %q holds %s", env, e)
		}
	}
}
