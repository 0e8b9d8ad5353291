package main

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/flowcontrol"

	"metaguard.dev/metaguard/e2e/sandbox"
)

// scaleNamespace names the i-th of the cluster's namespaces.
func scaleNamespace(i int) string { return fmt.Sprintf("team-%03d", i) }

// otherNode names the i-th node that is not this one.
func otherNode(i int) string { return fmt.Sprintf("node-%04d", i) }

// fastClient is an admin client without client-side rate limiting that
// speaks protobuf: creating a cluster's worth of pods is the API server's
// work, not the client's.
func fastClient(s *sandbox.Sandbox) (kubernetes.Interface, error) {
	cfg := s.AdminConfig()
	cfg.RateLimiter = flowcontrol.NewFakeAlwaysRateLimiter()
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	cfg.UserAgent = "metaguard-bench-loader"
	return kubernetes.NewForConfig(cfg)
}

// workloadPod is a pod as a Deployment's ReplicaSet and admission make it:
// labels, owner, one container with ports, env, resources, probes, the
// projected service account volume and the default tolerations. Object
// size drives what an unscoped informer receives, so the pods are not
// bare.
func workloadPod(ns, name, node string, app int) *corev1.Pod {
	grace := int64(30)
	ctrl := true
	appName := fmt.Sprintf("svc-%d", app)
	hash := fmt.Sprintf("%08x", uint32(app)*2654435761)[:8]
	tol := int64(300)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: ns, Name: name,
			Labels: map[string]string{
				"app": appName, "app.kubernetes.io/name": appName, "app.kubernetes.io/part-of": "shop",
				"pod-template-hash": hash, "version": "v1",
			},
			Annotations: map[string]string{"prometheus.io/scrape": "true", "prometheus.io/port": "9090"},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "apps/v1", Kind: "ReplicaSet", Name: appName + "-" + hash,
				UID: "5b1c3e0a-8f2d-4c6b-9a7e-0d4f1b2c3a4d", Controller: &ctrl, BlockOwnerDeletion: &ctrl,
			}},
		},
		Spec: corev1.PodSpec{
			NodeName:                      node,
			ServiceAccountName:            "default",
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{
				Name:  "app",
				Image: "registry.example.com/shop/" + appName + ":1.24.3",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}, {Name: "metrics", ContainerPort: 9090, Protocol: corev1.ProtocolTCP}},
				Env: []corev1.EnvVar{
					{Name: "LOG_LEVEL", Value: "info"},
					{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
					{Name: "AWS_REGION", Value: "eu-west-1"},
				},
				Resources: corev1.ResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
					Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
				},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}}, PeriodSeconds: 10},
				VolumeMounts:   []corev1.VolumeMount{{Name: "kube-api-access", MountPath: "/var/run/secrets/kubernetes.io/serviceaccount", ReadOnly: true}},
			}},
			Volumes: []corev1.Volume{{Name: "kube-api-access", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
				{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token", ExpirationSeconds: ptr(int64(3607))}},
				{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"}, Items: []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}},
				{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{{Path: "namespace", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}}}},
			}}}}},
			Tolerations: []corev1.Toleration{
				{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: &tol},
				{Key: "node.kubernetes.io/unreachable", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: &tol},
			},
		},
	}
}

func ptr[T any](v T) *T { return &v }

// runningStatus is what the kubelet publishes for a running pod.
func runningStatus(pod *corev1.Pod, hostIP string, ip netip.Addr) {
	now := metav1.Now()
	pod.Status.Phase = corev1.PodRunning
	pod.Status.HostIP, pod.Status.HostIPs = hostIP, []corev1.HostIP{{IP: hostIP}}
	pod.Status.PodIP, pod.Status.PodIPs = ip.String(), []corev1.PodIP{{IP: ip.String()}}
	pod.Status.StartTime = &now
	pod.Status.QOSClass = corev1.PodQOSBurstable
	pod.Status.Conditions = []corev1.PodCondition{
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
	}
	pod.Status.ContainerStatuses = []corev1.ContainerStatus{{
		Name: "app", Ready: true, Started: ptr(true), RestartCount: 0,
		Image: pod.Spec.Containers[0].Image, ImageID: pod.Spec.Containers[0].Image + "@sha256:4f9c4b2a1e0d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b",
		ContainerID: "containerd://" + fmt.Sprintf("%064x", ip.As4()),
		State:       corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
	}}
}

// createNamespaces makes the cluster's namespaces, each with the
// "default" ServiceAccount admission wants (no controller manager runs to
// make it).
func createNamespaces(ctx context.Context, s *sandbox.Sandbox, n int) error {
	for i := range n {
		if err := s.EnsureNamespace(ctx, scaleNamespace(i), map[string]string{"team": fmt.Sprintf("t%d", i%20)}); err != nil {
			return err
		}
	}
	return nil
}

// createPods creates pods first..last-1 with workers in parallel, each pod
// i made by mk, with an optional status update; it stops early when ctx
// ends or deadline passes and returns how many it created. created counts
// them as they go, for progress reports.
func createPods(ctx context.Context, c kubernetes.Interface, first, last, workers int, deadline time.Time,
	created *atomic.Int64, mk func(i int) (*corev1.Pod, func(*corev1.Pod))) (int, error) {
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	next.Store(int64(first))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for range workers {
		wg.Go(func() {
			for ctx.Err() == nil && time.Now().Before(deadline) {
				i := int(next.Add(1) - 1)
				if i >= last {
					return
				}
				pod, status := mk(i)
				got, err := c.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
				if err == nil && status != nil {
					status(got)
					_, err = c.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, got, metav1.UpdateOptions{})
				}
				if err != nil {
					if ctx.Err() == nil {
						errOnce.Do(func() { firstErr = fmt.Errorf("creating pod %s/%s: %w", pod.Namespace, pod.Name, err); cancel() })
					}
					return
				}
				created.Add(1)
			}
		})
	}
	wg.Wait()
	return int(created.Load()), firstErr
}
