package sandbox

import (
	"context"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// DeletePodGracefully asks the API server to delete the Pod object with a
// grace period, as `kubectl delete` does, and returns the deletion
// deadline it set (deletionTimestamp: the request time plus the grace
// period, in whole seconds). A running pod on a node is not removed then:
// the API server waits for the kubelet to confirm its containers are
// gone, and the sandbox has no kubelet, so the object stays, marked for
// deletion, until DeletePod or Close. The pod's network namespace is left
// alone: what happens to the address is the caller's to stage.
func (s *Sandbox) DeletePodGracefully(ctx context.Context, pod *Pod, grace time.Duration) (time.Time, error) {
	secs := int64(grace / time.Second)
	if secs < 1 {
		return time.Time{}, fmt.Errorf("deleting pod %s gracefully: a grace period of %s is under a second", pod, grace)
	}
	pods := s.client.CoreV1().Pods(pod.Namespace)
	if err := pods.Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: &secs}); err != nil {
		return time.Time{}, fmt.Errorf("deleting pod %s gracefully: %w", pod, err)
	}
	cur, err := pods.Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		return time.Time{}, fmt.Errorf("reading pod %s after its graceful delete (the API server removed it at once?): %w", pod, err)
	}
	if cur.DeletionTimestamp == nil {
		return time.Time{}, fmt.Errorf("pod %s has no deletionTimestamp after a graceful delete", pod)
	}
	return cur.DeletionTimestamp.Time, nil
}
