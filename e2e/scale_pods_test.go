//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/flowcontrol"

	"metaguard.dev/metaguard/e2e/sandbox"
)

// loader creates a cluster's worth of pods: an admin client without
// client-side rate limiting that speaks protobuf, so the time goes to the
// API server, not the client.
type loader struct {
	t *testing.T
	c kubernetes.Interface
}

func newLoader(t *testing.T, s *sandbox.Sandbox) *loader {
	cfg := s.AdminConfig()
	cfg.RateLimiter = flowcontrol.NewFakeAlwaysRateLimiter()
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &loader{t: t, c: c}
}

// create makes pods first..last-1 with 48 parallel creates; a pod given an
// address gets a Running status with it, as its kubelet would publish.
func (l *loader) create(ctx context.Context, first, last int, mk func(i int) (*corev1.Pod, netip.Addr)) {
	var next, created atomic.Int64
	next.Store(int64(first))
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	for range 48 {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < last && ctx.Err() == nil; i = int(next.Add(1) - 1) {
				pod, ip := mk(i)
				got, err := l.c.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
				if err == nil && ip.IsValid() {
					runningStatus(got, ip)
					_, err = l.c.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, got, metav1.UpdateOptions{})
				}
				if err != nil {
					cancel(fmt.Errorf("creating pod %s/%s: %w", pod.Namespace, pod.Name, err))
					return
				}
				if n := created.Add(1); n%20000 == 0 {
					l.t.Logf("%d pods created", n)
				}
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		l.t.Fatal(err)
	}
}

// workloadPod is a pod as a Deployment's ReplicaSet and admission make it:
// labels, owner, a container with ports, env, resources and a probe, the
// projected token volume and the default tolerations. Object size drives
// what an unscoped informer receives, so the pods are not bare.
func workloadPod(ns int, name, node string, app int) *corev1.Pod {
	yes, grace, tol := true, int64(30), int64(300)
	appName, hash := fmt.Sprintf("svc-%d", app), fmt.Sprintf("%08x", uint32(app)*2654435761)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: fmt.Sprintf("team-%03d", ns), Name: name,
			Labels:      map[string]string{"app": appName, "app.kubernetes.io/name": appName, "app.kubernetes.io/part-of": "shop", "pod-template-hash": hash, "version": "v1"},
			Annotations: map[string]string{"prometheus.io/scrape": "true", "prometheus.io/port": "9090"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: appName + "-" + hash,
				UID: "5b1c3e0a-8f2d-4c6b-9a7e-0d4f1b2c3a4d", Controller: &yes, BlockOwnerDeletion: &yes}},
		},
		Spec: corev1.PodSpec{
			NodeName: node, ServiceAccountName: "default", TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{
				Name: "app", Image: "registry.example.com/shop/" + appName + ":1.24.3",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "metrics", ContainerPort: 9090}},
				Env: []corev1.EnvVar{{Name: "LOG_LEVEL", Value: "info"}, {Name: "AWS_REGION", Value: "eu-west-1"},
					{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
				Resources: corev1.ResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
					Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
				},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}}, PeriodSeconds: 10},
				VolumeMounts:   []corev1.VolumeMount{{Name: "kube-api-access", MountPath: "/var/run/secrets/kubernetes.io/serviceaccount", ReadOnly: true}},
			}},
			Volumes: []corev1.Volume{{Name: "kube-api-access", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
				{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token"}},
				{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"}, Items: []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}},
			}}}}},
			Tolerations: []corev1.Toleration{
				{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: &tol},
				{Key: "node.kubernetes.io/unreachable", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: &tol},
			},
		},
	}
}

// runningStatus is what a kubelet publishes for a running pod.
func runningStatus(pod *corev1.Pod, ip netip.Addr) {
	now := metav1.Now()
	pod.Status = corev1.PodStatus{
		Phase: corev1.PodRunning, HostIP: sandbox.HostIP.String(), HostIPs: []corev1.HostIP{{IP: sandbox.HostIP.String()}},
		PodIP: ip.String(), PodIPs: []corev1.PodIP{{IP: ip.String()}}, StartTime: &now, QOSClass: corev1.PodQOSBurstable,
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}},
		ContainerStatuses: []corev1.ContainerStatus{{Name: "app", Ready: true, Image: pod.Spec.Containers[0].Image,
			ContainerID: fmt.Sprintf("containerd://%064x", ip.As4()), State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}}}},
	}
}

// informerRun is what a pods informer in the test received until synced.
type informerRun struct {
	wire, decoded int64 // on the wire (TLS records of gzip of protobuf); the bodies after decompression
	took          time.Duration
}

type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// informerBytes runs a pods informer as metaguard builds its own (same
// client-go, default content negotiation, a transform), with the field
// selector given, and counts what it receives until it has synced.
func informerBytes(ctx context.Context, t *testing.T, s *sandbox.Sandbox, selector string) informerRun {
	var wire, decoded atomic.Int64
	cfg := s.AdminConfig()
	dial := cfg.Dial
	cfg.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return countingConn{c, &wire}, nil
	}
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			resp, err := rt.RoundTrip(r)
			if err == nil {
				resp.Body = countingBody{resp.Body, &decoded}
			}
			return resp, err
		})
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTweakListOptions(func(lo *metav1.ListOptions) { lo.FieldSelector = selector }),
		// Names only: the bytes are the point, not the test's memory.
		informers.WithTransform(func(obj any) (any, error) {
			if p, ok := obj.(*corev1.Pod); ok {
				return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, ResourceVersion: p.ResourceVersion}}, nil
			}
			return obj, nil
		}))
	inf := f.Core().V1().Pods().Informer()
	ictx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	begin := time.Now()
	f.StartWithContext(ictx)
	defer f.Shutdown()
	eventually(t, 10*time.Minute, inf.HasSynced)
	run := informerRun{wire: wire.Load(), decoded: decoded.Load(), took: time.Since(begin)}
	cancel()
	return run
}
