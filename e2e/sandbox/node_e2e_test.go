//go:build e2e

package sandbox

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestNodeSandbox is the real node's own smoke test, without metaguard:
// node-a registers and goes Ready, a container from the workload image
// runs on the CNI bridge and reaches the metadata service directly (what
// metaguard will stop), and kubectl exec works through the API server.
func TestNodeSandbox(t *testing.T) {
	s := StartT(t, Options{Node: &NodeOptions{}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "smoke", Namespace: "default"},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "c", Image: WorkloadImage, ImagePullPolicy: corev1.PullNever}},
		},
	}
	if _, err := s.AdminClient().CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if out, err := s.Kubectl(ctx, "wait", "--for=condition=Ready", "pod/smoke", "--timeout=90s"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	out, err := s.Kubectl(ctx, "exec", "smoke", "--", "podclient", "get", "http://169.254.169.254/latest/meta-data/instance-id")
	if err != nil {
		t.Fatalf("kubectl exec: %v\n%s", err, out)
	}
	var res struct {
		OK     bool
		Status int
		Body   string
	}
	if err := json.Unmarshal(out, &res); err != nil || !res.OK || !strings.HasPrefix(res.Body, "i-") {
		t.Fatalf("the container's GET of the instance id: %s (%v)", out, err)
	}
}
