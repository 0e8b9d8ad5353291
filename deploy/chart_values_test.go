package deploy

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"

	"metaguard.dev/metaguard/deploy/render"
)

// renderChart renders the chart as `helm template` would and decodes every
// object strictly into its API type.
func renderChart(t *testing.T, values map[string]any) []object {
	t.Helper()
	m, err := render.Manifest(chartDir, values)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := decodeManifests("chart", []byte(m))
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func chartDaemonSet(t *testing.T, values map[string]any) *appsv1.DaemonSet {
	t.Helper()
	return find[*appsv1.DaemonSet](t, renderChart(t, values), "DaemonSet", "metaguard")
}

// schedulable reports whether the scheduler would place the DaemonSet's
// pod on a node with these labels, by the scheduler's own matcher.
func schedulable(ds *appsv1.DaemonSet, labels map[string]string) bool {
	pod := &corev1.Pod{Spec: ds.Spec.Template.Spec}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Labels: labels}}
	ok, _ := nodeaffinity.GetRequiredNodeAffinity(pod).Match(node)
	return ok
}

var presets = []string{"", "aws", "gcp", "azure"}

func TestChartPlacementPerPreset(t *testing.T) {
	linux := map[string]string{"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
	with := func(k, v string) map[string]string {
		m := map[string]string{}
		for a, b := range linux {
			m[a] = b
		}
		m[k] = v
		return m
	}
	nodes := []struct {
		name   string
		labels map[string]string
		want   bool
	}{
		{"an ordinary Linux node", linux, true},
		{"an EKS managed node", with("eks.amazonaws.com/compute-type", "ec2"), true},
		{"a Windows node", map[string]string{"kubernetes.io/os": "windows"}, false},
		{"a node that says no OS", map[string]string{}, false},
		{"an EKS Fargate node", with("eks.amazonaws.com/compute-type", "fargate"), false},
		{"a virtual-kubelet node (AKS virtual nodes)", with("type", "virtual-kubelet"), false},
		{"a GKE node where GKE's metadata server runs", with("iam.gke.io/gke-metadata-server-enabled", "true"), false},
		{"a GKE node without GKE's metadata server", with("iam.gke.io/gke-metadata-server-enabled", "false"), true},
	}
	for _, p := range presets {
		ds := chartDaemonSet(t, map[string]any{"preset": p})
		for _, n := range nodes {
			t.Run(fmt.Sprintf("preset %q on %s: scheduled %v", p, n.name, n.want), func(t *testing.T) {
				if got := schedulable(ds, n.labels); got != n.want {
					t.Errorf("scheduled = %v", got)
				}
			})
		}
	}

	t.Run("a required node affinity of the user's is added to the placement, not put in its place", func(t *testing.T) {
		ds := chartDaemonSet(t, map[string]any{"preset": "aws", "affinity": map[string]any{"nodeAffinity": map[string]any{
			"requiredDuringSchedulingIgnoredDuringExecution": map[string]any{"nodeSelectorTerms": []any{
				map[string]any{"matchExpressions": []any{map[string]any{"key": "pool", "operator": "In", "values": []any{"a"}}}},
				map[string]any{"matchExpressions": []any{map[string]any{"key": "pool", "operator": "In", "values": []any{"b"}}}},
			}}}}})
		for _, c := range []struct {
			labels map[string]string
			want   bool
		}{
			{with("pool", "a"), true},
			{with("pool", "b"), true},
			{linux, false},
			{map[string]string{"kubernetes.io/os": "windows", "pool": "b"}, false},
			{map[string]string{"kubernetes.io/os": "linux", "pool": "a", "eks.amazonaws.com/compute-type": "fargate"}, false},
		} {
			if got := schedulable(ds, c.labels); got != c.want {
				t.Errorf("node %v: scheduled = %v, want %v", c.labels, got, c.want)
			}
		}
	})

	t.Run("a nodeSelector narrows the placement further", func(t *testing.T) {
		ds := chartDaemonSet(t, map[string]any{"nodeSelector": map[string]any{"pool": "a"}})
		if schedulable(ds, linux) || !schedulable(ds, with("pool", "a")) {
			t.Error("nodeSelector is not applied")
		}
	})
}

func TestChartPresets(t *testing.T) {
	for _, p := range presets {
		t.Run(fmt.Sprintf("preset %q carries that cloud's policy byte for byte", p), func(t *testing.T) {
			file := p
			if file == "" {
				file = "base"
			}
			want, err := os.ReadFile(chartDir + "/files/policies/" + file + ".yaml")
			if err != nil {
				t.Fatal(err)
			}
			objs := renderChart(t, map[string]any{"preset": p})
			cm := find[*corev1.ConfigMap](t, objs, "ConfigMap", "metaguard-policy")
			if cm.Data[policyKey] != string(want) {
				t.Errorf("the ConfigMap's policy differs from files/policies/%s.yaml", file)
			}
			checkDaemonSet(t, find[*appsv1.DaemonSet](t, objs, "DaemonSet", "metaguard"))
			if got, want := countKind(objs, "ResourceQuota"), map[bool]int{true: 1}[p == "gcp"]; got != want {
				t.Errorf("%d ResourceQuotas, want %d (GKE's quota for system-node-critical pods, gcp only)", got, want)
			}
		})
	}
	t.Run("the presets' endpoints are the ones the overlays ship", func(t *testing.T) {
		for _, o := range overlays {
			cm := find[*corev1.ConfigMap](t, renderChart(t, map[string]any{"preset": o.dir[len("overlays/"):]}), "ConfigMap", "metaguard-policy")
			checkPolicy(t, o, []byte(cm.Data[policyKey]))
		}
	})
}

func TestChartValues(t *testing.T) {
	container := func(ds *appsv1.DaemonSet) corev1.Container { return ds.Spec.Template.Spec.Containers[0] }

	t.Run("the image tag defaults to the chart's appVersion, and a digest pins it", func(t *testing.T) {
		if got := container(chartDaemonSet(t, nil)).Image; got != "metaguard:v0.1.0" {
			t.Errorf("image %q", got)
		}
		c := container(chartDaemonSet(t, map[string]any{"image": map[string]any{"repository": "registry.example/mg", "tag": "v9", "pullPolicy": "Always"}}))
		if c.Image != "registry.example/mg:v9" || c.ImagePullPolicy != corev1.PullAlways {
			t.Errorf("image %q pull %q", c.Image, c.ImagePullPolicy)
		}
		d := "sha256:" + fmt.Sprintf("%064x", 1)
		if got := container(chartDaemonSet(t, map[string]any{"image": map[string]any{"digest": d}})).Image; got != "metaguard@"+d {
			t.Errorf("image %q", got)
		}
	})

	t.Run("maxUnavailable takes a number or a percentage", func(t *testing.T) {
		for v, want := range map[any]intstr.IntOrString{5: intstr.FromInt32(5), "10%": intstr.FromString("10%")} {
			ds := chartDaemonSet(t, map[string]any{"updateStrategy": map[string]any{"maxUnavailable": v}})
			if got := ds.Spec.UpdateStrategy.RollingUpdate.MaxUnavailable; got == nil || *got != want {
				t.Errorf("maxUnavailable %v renders %v", v, got)
			}
		}
	})

	t.Run("an inline policy replaces the preset's, an existing ConfigMap replaces the chart's", func(t *testing.T) {
		inline := "apiVersion: metaguard.dev/v1alpha1\nkind: Policy\nendpoints:\n  - {name: x, address: \"169.254.169.254:80\", flavor: generic}\n"
		cm := find[*corev1.ConfigMap](t, renderChart(t, map[string]any{"preset": "aws", "policy": map[string]any{"inline": inline}}), "ConfigMap", "metaguard-policy")
		if cm.Data[policyKey] != inline {
			t.Errorf("policy %q", cm.Data[policyKey])
		}
		objs := renderChart(t, map[string]any{"policy": map[string]any{"existingConfigMap": "mine"}})
		if countKind(objs, "ConfigMap") != 0 {
			t.Error("the chart still renders its own policy ConfigMap")
		}
		ds := find[*appsv1.DaemonSet](t, objs, "DaemonSet", "metaguard")
		if !slices.ContainsFunc(ds.Spec.Template.Spec.Volumes, func(v corev1.Volume) bool {
			return v.ConfigMap != nil && v.ConfigMap.Name == "mine"
		}) {
			t.Error("the DaemonSet does not mount the named ConfigMap")
		}
	})

	t.Run("resources, Go runtime, priority, tolerations, ports and extra args reach the container", func(t *testing.T) {
		ds := chartDaemonSet(t, map[string]any{
			"resources":         map[string]any{"requests": map[string]any{"cpu": "100m", "memory": "96Mi"}, "limits": map[string]any{"memory": "128Mi"}},
			"goRuntime":         map[string]any{"gogc": "200", "gomemlimit": "100MiB"},
			"priorityClassName": "system-cluster-critical",
			"tolerations":       []any{map[string]any{"key": "dedicated", "operator": "Exists"}},
			"listenPort":        8300,
			"extraArgs":         []any{"--identity-wait=2s"},
		})
		c := container(ds)
		if c.Resources.Limits.Memory().String() != "128Mi" || c.Resources.Requests.Cpu().String() != "100m" {
			t.Errorf("resources %+v", c.Resources)
		}
		env := map[string]string{}
		for _, e := range c.Env {
			env[e.Name] = e.Value
		}
		if env["GOGC"] != "200" || env["GOMEMLIMIT"] != "100MiB" || env["GOMAXPROCS"] != "1" {
			t.Errorf("env %v", env)
		}
		if ds.Spec.Template.Spec.PriorityClassName != "system-cluster-critical" || len(ds.Spec.Template.Spec.Tolerations) != 1 {
			t.Errorf("priority %q tolerations %+v", ds.Spec.Template.Spec.PriorityClassName, ds.Spec.Template.Spec.Tolerations)
		}
		if !slices.Contains(c.Args, "--listen=:8300") || c.Ports[0].ContainerPort != 8300 || c.Args[len(c.Args)-1] != "--identity-wait=2s" {
			t.Errorf("args %q ports %+v", c.Args, c.Ports)
		}
	})

	t.Run("the default listen port is 8169, not kube2iam's and kiam's 8181", func(t *testing.T) {
		c := container(chartDaemonSet(t, nil))
		if !slices.Contains(c.Args, "--listen=:8169") || c.Ports[0].ContainerPort != 8169 {
			t.Errorf("args %q ports %+v", c.Args, c.Ports)
		}
	})

	t.Run("with Helm's labels, the selector still selects only the stable name label", func(t *testing.T) {
		ds := chartDaemonSet(t, nil)
		if ds.Labels["app.kubernetes.io/managed-by"] != "Helm" || len(ds.Spec.Selector.MatchLabels) != 1 {
			t.Errorf("labels %v selector %v", ds.Labels, ds.Spec.Selector.MatchLabels)
		}
	})
}

func TestChartNodeTaint(t *testing.T) {
	t.Run("off, the chart grants nothing on nodes and admits no policy", func(t *testing.T) {
		for _, o := range renderChart(t, nil) {
			if o.kind == "ValidatingAdmissionPolicy" || o.obj.GetName() == "metaguard-node-taint" {
				t.Errorf("%s %s rendered without nodeTaint", o.kind, o.obj.GetName())
			}
		}
	})
	t.Run("on, the grant comes with the admission policy that narrows it, bound to deny", func(t *testing.T) {
		objs := renderChart(t, map[string]any{"nodeTaint": map[string]any{"enabled": true}})
		args := find[*appsv1.DaemonSet](t, objs, "DaemonSet", "metaguard").Spec.Template.Spec.Containers[0].Args
		if !slices.Contains(args, nodeTaintArg) {
			t.Errorf("args %q lack %s", args, nodeTaintArg)
		}
		vap := find[*admissionv1.ValidatingAdmissionPolicy](t, objs, "ValidatingAdmissionPolicy", "metaguard-node-taint")
		if vap.Spec.FailurePolicy == nil || *vap.Spec.FailurePolicy != admissionv1.Fail {
			t.Error("the policy does not fail closed")
		}
		if len(vap.Spec.MatchConditions) != 1 || vap.Spec.MatchConditions[0].Expression != `request.userInfo.username == "system:serviceaccount:metaguard:metaguard"` {
			t.Errorf("match conditions %+v", vap.Spec.MatchConditions)
		}
		b := find[*admissionv1.ValidatingAdmissionPolicyBinding](t, objs, "ValidatingAdmissionPolicyBinding", "metaguard-node-taint")
		if b.Spec.PolicyName != vap.Name || !slices.Equal(b.Spec.ValidationActions, []admissionv1.ValidationAction{admissionv1.Deny}) {
			t.Errorf("binding %+v", b.Spec)
		}
	})
}

func TestChartMonitoring(t *testing.T) {
	on := map[string]any{"enabled": true}
	t.Run("a PodMonitor scrapes the metrics port of metaguard's pods as job metaguard, with the node", func(t *testing.T) {
		objs := renderChart(t, map[string]any{"metrics": map[string]any{"podMonitor": on}})
		pm := find[*monitoringv1.PodMonitor](t, objs, "PodMonitor", "metaguard")
		if pm.Spec.JobLabel != appLabel || pm.Spec.Selector.MatchLabels[appLabel] != "metaguard" {
			t.Errorf("jobLabel %q selector %v", pm.Spec.JobLabel, pm.Spec.Selector)
		}
		ep := pm.Spec.PodMetricsEndpoints
		if len(ep) != 1 || ep[0].Port == nil || *ep[0].Port != "metrics" || len(ep[0].RelabelConfigs) != 1 || ep[0].RelabelConfigs[0].TargetLabel != "node" {
			t.Errorf("endpoints %+v", ep)
		}
	})
	t.Run("a ServiceMonitor comes with the headless Service it needs", func(t *testing.T) {
		objs := renderChart(t, map[string]any{"metrics": map[string]any{"serviceMonitor": on}})
		sm := find[*monitoringv1.ServiceMonitor](t, objs, "ServiceMonitor", "metaguard")
		svc := find[*corev1.Service](t, objs, "Service", "metaguard-metrics")
		if svc.Spec.ClusterIP != corev1.ClusterIPNone || svc.Spec.Selector[appLabel] != "metaguard" {
			t.Errorf("service %+v", svc.Spec)
		}
		for k, v := range sm.Spec.Selector.MatchLabels {
			if svc.Labels[k] != v {
				t.Errorf("the ServiceMonitor's selector %v does not select the Service %v", sm.Spec.Selector.MatchLabels, svc.Labels)
			}
		}
	})
	t.Run("both monitors at once are refused: every node would be scraped twice", func(t *testing.T) {
		_, err := render.Manifest(chartDir, map[string]any{"metrics": map[string]any{"podMonitor": on, "serviceMonitor": on}})
		if err == nil || !strings.Contains(err.Error(), "not both") {
			t.Errorf("%v, want the chart's refusal of both monitors", err)
		}
	})
	t.Run("the PrometheusRule and the dashboard carry the chart's files", func(t *testing.T) {
		objs := renderChart(t, map[string]any{"metrics": map[string]any{"prometheusRule": on, "dashboard": on}})
		pr := find[*monitoringv1.PrometheusRule](t, objs, "PrometheusRule", "metaguard")
		if len(pr.Spec.Groups) != 1 || len(pr.Spec.Groups[0].Rules) < 10 {
			t.Errorf("groups %+v", pr.Spec.Groups)
		}
		cm := find[*corev1.ConfigMap](t, objs, "ConfigMap", "metaguard-dashboard")
		want, err := os.ReadFile(chartDir + "/files/monitoring/dashboard.json")
		if err != nil {
			t.Fatal(err)
		}
		if cm.Data["metaguard.json"] != strings.TrimRight(string(want), "\n") || cm.Labels["grafana_dashboard"] != "1" {
			t.Errorf("dashboard ConfigMap labels %v, or its JSON differs from files/monitoring/dashboard.json", cm.Labels)
		}
	})
}
