package sandbox

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
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

// SetContainersTerminated reports every container of the pod terminated
// through the status subresource, as the kubelet does once they exit and
// before the phase follows; the phase is left as it is.
func (s *Sandbox) SetContainersTerminated(ctx context.Context, pod *Pod) error {
	pods := s.client.CoreV1().Pods(pod.Namespace)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := pods.Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		now := metav1.Now()
		cur.Status.ContainerStatuses = nil
		for _, c := range cur.Spec.Containers {
			cur.Status.ContainerStatuses = append(cur.Status.ContainerStatuses, corev1.ContainerStatus{
				Name:  c.Name,
				Image: c.Image,
				State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0, Reason: "Completed", StartedAt: now, FinishedAt: now}},
			})
		}
		_, err = pods.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("terminating the containers of pod %s: %w", pod, err)
	}
	return nil
}
