package sandbox

import (
	"os"
	"slices"
	"testing"
)

func TestTheDaemonSetsGoRuntimeSettingsAreFound(t *testing.T) {
	b, err := os.ReadFile("../../deploy/base/daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	objs, err := decodeObjects(b)
	if err != nil {
		t.Fatal(err)
	}
	var env []string
	for _, o := range objs {
		if e := metaguardGoEnv(o); e != nil {
			env = e
		}
	}
	// Only literal GO* values: NODE_NAME and HOST_IP come from the
	// downward API, which the sandbox answers with flags instead.
	for _, want := range []string{"GOGC=400", "GOMEMLIMIT=40MiB", "GOMAXPROCS=2"} {
		if !slices.Contains(env, want) {
			t.Errorf("env %q lacks %s", env, want)
		}
	}
	for _, e := range env {
		if e[:2] != "GO" {
			t.Errorf("env %q holds %s", env, e)
		}
	}
}

func TestOtherObjectsCarryNoGoRuntimeSettings(t *testing.T) {
	objs, err := decodeObjects([]byte(`
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: other}
spec:
  template:
    spec:
      containers:
        - name: metaguard
          env: [{name: GOGC, value: "1"}]
`))
	if err != nil {
		t.Fatal(err)
	}
	if env := metaguardGoEnv(objs[0]); env != nil {
		t.Errorf("a DaemonSet named other gave %q", env)
	}
}
