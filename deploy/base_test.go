package deploy

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

const (
	namespace  = "metaguard"
	appLabel   = "app.kubernetes.io/name"
	policyKey  = "policy.yaml"
	policyDir  = "/etc/metaguard"
	xtablesLck = "/run/xtables.lock"
)

func TestBaseKustomization(t *testing.T) {
	t.Run("every resource it lists exists and every manifest in base is listed", func(t *testing.T) {
		k := readKustomization(t, "base")
		for _, r := range k.Resources {
			if _, err := os.Stat(filepath.Join("base", r)); err != nil {
				t.Errorf("resource %s: %v", r, err)
			}
		}
		files, err := filepath.Glob("base/*.yaml")
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			name := filepath.Base(f)
			if name != "kustomization.yaml" && !slices.Contains(k.Resources, name) {
				t.Errorf("%s is not in base/kustomization.yaml, so it is never applied", f)
			}
		}
	})

	objs := loadDir(t, "base")

	t.Run("every object carries the app label and namespaced ones live in metaguard", func(t *testing.T) {
		for _, o := range objs {
			if got := o.obj.GetLabels()[appLabel]; got != "metaguard" {
				t.Errorf("%s %s: label %s=%q, want metaguard", o.kind, o.obj.GetName(), appLabel, got)
			}
			clusterScoped := o.kind == "Namespace" || strings.HasPrefix(o.kind, "Cluster")
			if clusterScoped && o.obj.GetNamespace() != "" {
				t.Errorf("%s %s is cluster-scoped but names namespace %q", o.kind, o.obj.GetName(), o.obj.GetNamespace())
			}
			if !clusterScoped && o.obj.GetNamespace() != namespace {
				t.Errorf("%s %s: namespace %q, want %q", o.kind, o.obj.GetName(), o.obj.GetNamespace(), namespace)
			}
		}
	})

	t.Run("the namespace admits privileged pods because hostNetwork and NET_ADMIN need it", func(t *testing.T) {
		ns := find[*corev1.Namespace](t, objs, "Namespace", namespace)
		if got := ns.Labels["pod-security.kubernetes.io/enforce"]; got != "privileged" {
			t.Errorf("pod-security enforce label = %q, want privileged", got)
		}
	})

	t.Run("the ClusterRole grants get, list and watch on pods and namespaces and nothing else", func(t *testing.T) {
		checkReadOnlyRole(t, find[*rbacv1.ClusterRole](t, objs, "ClusterRole", "metaguard"))
	})

	t.Run("the ClusterRoleBinding gives that role to the metaguard service account only", func(t *testing.T) {
		b := find[*rbacv1.ClusterRoleBinding](t, objs, "ClusterRoleBinding", "metaguard")
		checkBinding(t, b, "metaguard")
		find[*corev1.ServiceAccount](t, objs, "ServiceAccount", "metaguard")
	})

	t.Run("the ConfigMap carries the policy under the key the DaemonSet reads", func(t *testing.T) {
		cm := find[*corev1.ConfigMap](t, objs, "ConfigMap", "metaguard-policy")
		if _, ok := cm.Data[policyKey]; !ok || len(cm.Data) != 1 {
			t.Errorf("data keys = %v, want exactly %q", keys(cm.Data), policyKey)
		}
	})

	t.Run("the DaemonSet keeps every promise docs/operations.md makes", func(t *testing.T) {
		checkDaemonSet(t, find[*appsv1.DaemonSet](t, objs, "DaemonSet", "metaguard"))
	})
}

func checkReadOnlyRole(t *testing.T, r *rbacv1.ClusterRole) {
	t.Helper()
	want := []rbacv1.PolicyRule{{
		APIGroups: []string{""},
		Resources: []string{"pods", "namespaces"},
		Verbs:     []string{"get", "list", "watch"},
	}}
	if !equalRules(r.Rules, want) {
		t.Errorf("ClusterRole %s rules = %+v, want %+v", r.Name, r.Rules, want)
	}
	if r.AggregationRule != nil {
		t.Errorf("ClusterRole %s aggregates other roles", r.Name)
	}
}

func checkBinding(t *testing.T, b *rbacv1.ClusterRoleBinding, role string) {
	t.Helper()
	if b.RoleRef != (rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role}) {
		t.Errorf("ClusterRoleBinding %s roleRef = %+v, want ClusterRole %s", b.Name, b.RoleRef, role)
	}
	want := []rbacv1.Subject{{Kind: "ServiceAccount", Name: "metaguard", Namespace: namespace}}
	if !slices.Equal(b.Subjects, want) {
		t.Errorf("ClusterRoleBinding %s subjects = %+v, want %+v", b.Name, b.Subjects, want)
	}
}

// equalRules compares rules ignoring the order of list elements, which
// carries no meaning in RBAC.
func equalRules(got, want []rbacv1.PolicyRule) bool {
	if len(got) != len(want) {
		return false
	}
	norm := func(s []string) []string { s = slices.Clone(s); slices.Sort(s); return s }
	for i := range got {
		g, w := got[i], want[i]
		if !slices.Equal(norm(g.APIGroups), norm(w.APIGroups)) ||
			!slices.Equal(norm(g.Resources), norm(w.Resources)) ||
			!slices.Equal(norm(g.Verbs), norm(w.Verbs)) ||
			len(g.ResourceNames) != 0 || len(g.NonResourceURLs) != 0 {
			return false
		}
	}
	return true
}

func checkDaemonSet(t *testing.T, ds *appsv1.DaemonSet) {
	t.Helper()
	spec := ds.Spec.Template.Spec
	if ds.Spec.Selector == nil || ds.Spec.Selector.MatchLabels[appLabel] != "metaguard" ||
		ds.Spec.Template.Labels[appLabel] != "metaguard" {
		t.Errorf("selector %v does not select the template labels %v", ds.Spec.Selector, ds.Spec.Template.Labels)
	}
	if !spec.HostNetwork {
		t.Error("hostNetwork is false: pods reach metaguard at the node IP")
	}
	if spec.HostPID || spec.HostIPC {
		t.Error("hostPID or hostIPC is set; metaguard needs neither")
	}
	if spec.ServiceAccountName != "metaguard" {
		t.Errorf("serviceAccountName = %q", spec.ServiceAccountName)
	}
	if spec.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName = %q", spec.PriorityClassName)
	}
	if !slices.ContainsFunc(spec.Tolerations, func(tol corev1.Toleration) bool {
		return tol.Key == "" && tol.Operator == corev1.TolerationOpExists && tol.Effect == ""
	}) {
		t.Errorf("tolerations %+v do not tolerate every taint", spec.Tolerations)
	}
	if g := spec.TerminationGracePeriodSeconds; g == nil || *g != 30 {
		t.Errorf("terminationGracePeriodSeconds = %v, want 30", g)
	}
	us := ds.Spec.UpdateStrategy
	if us.Type != appsv1.RollingUpdateDaemonSetStrategyType || us.RollingUpdate == nil ||
		us.RollingUpdate.MaxUnavailable == nil || *us.RollingUpdate.MaxUnavailable != intstr.FromInt32(1) ||
		us.RollingUpdate.MaxSurge == nil || *us.RollingUpdate.MaxSurge != intstr.FromInt32(0) {
		t.Errorf("updateStrategy = %+v, want RollingUpdate maxUnavailable 1 maxSurge 0", us)
	}
	if sc := spec.SecurityContext; sc == nil || sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Error("pod seccompProfile is not RuntimeDefault")
	}
	if len(spec.Containers) != 1 || len(spec.InitContainers) != 0 {
		t.Fatalf("want one container and no init containers, got %d and %d", len(spec.Containers), len(spec.InitContainers))
	}
	c := spec.Containers[0]

	wantArgs := []string{"run", "--config=" + policyDir + "/" + policyKey, "--listen=:8169", "--metrics-listen=:9181"}
	if !slices.Equal(c.Args[:min(len(c.Args), len(wantArgs))], wantArgs) || len(c.Command) != 0 {
		t.Errorf("command %q args %q, want the image's entrypoint with args starting %q", c.Command, c.Args, wantArgs)
	}
	checkEnvField(t, c, "NODE_NAME", "spec.nodeName")
	// status.hostIPs, not status.hostIP: one IP per family, so a dual-stack
	// node's IPv6 endpoints are redirected, not only dropped.
	checkEnvField(t, c, "HOST_IP", "status.hostIPs")

	wantPorts := []corev1.ContainerPort{
		{Name: "proxy", ContainerPort: 8169, Protocol: corev1.ProtocolTCP},
		{Name: "metrics", ContainerPort: 9181, Protocol: corev1.ProtocolTCP},
	}
	if !slices.Equal(c.Ports, wantPorts) {
		t.Errorf("ports = %+v, want %+v", c.Ports, wantPorts)
	}
	checkProbe(t, "liveness", c.LivenessProbe, "/healthz")
	checkProbe(t, "readiness", c.ReadinessProbe, "/readyz")

	if r := c.Resources; r.Requests.Cpu().IsZero() || r.Requests.Memory().IsZero() || r.Limits.Memory().IsZero() {
		t.Errorf("resources %+v: want cpu and memory requests and a memory limit", r)
	} else if _, ok := r.Limits[corev1.ResourceCPU]; ok {
		t.Error("a CPU limit throttles the request path; docs/operations.md promises none")
	} else if r.Limits.Memory().Cmp(*r.Requests.Memory()) < 0 {
		t.Error("memory limit below the request")
	}

	checkContainerSecurity(t, c)
	checkVolumes(t, spec, c)
}

func checkEnvField(t *testing.T, c corev1.Container, name, fieldPath string) {
	t.Helper()
	for _, e := range c.Env {
		if e.Name == name {
			if e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != fieldPath {
				t.Errorf("env %s is not from the downward API field %s: %+v", name, fieldPath, e)
			}
			return
		}
	}
	t.Errorf("env %s missing", name)
}

func checkProbe(t *testing.T, what string, p *corev1.Probe, path string) {
	t.Helper()
	if p == nil || p.HTTPGet == nil {
		t.Errorf("%s probe is not an HTTP GET", what)
		return
	}
	if p.HTTPGet.Path != path || p.HTTPGet.Port != intstr.FromString("metrics") {
		t.Errorf("%s probe = %s on port %s, want %s on the metrics port", what, p.HTTPGet.Path, p.HTTPGet.Port.String(), path)
	}
}

func checkContainerSecurity(t *testing.T, c corev1.Container) {
	t.Helper()
	sc := c.SecurityContext
	if sc == nil {
		t.Fatal("container has no securityContext")
	}
	if sc.Privileged == nil || *sc.Privileged {
		t.Error("privileged must be set, to false")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation must be false")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("readOnlyRootFilesystem must be true")
	}
	if sc.Capabilities == nil ||
		!slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) ||
		!slices.Equal(sc.Capabilities.Add, []corev1.Capability{"NET_ADMIN", "NET_RAW"}) {
		t.Errorf("capabilities = %+v, want drop ALL, add exactly NET_ADMIN and NET_RAW", sc.Capabilities)
	}
	if sc.SELinuxOptions != nil || sc.ProcMount != nil || sc.WindowsOptions != nil {
		t.Error("unexpected SELinux, procMount or Windows options")
	}
}

func checkVolumes(t *testing.T, spec corev1.PodSpec, c corev1.Container) {
	t.Helper()
	vols := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		vols[v.Name] = v
		if v.HostPath != nil && v.HostPath.Path != xtablesLck {
			t.Errorf("hostPath volume %s mounts %s; the only host path metaguard needs is %s", v.Name, v.HostPath.Path, xtablesLck)
		}
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		if _, ok := vols[m.Name]; !ok {
			t.Errorf("mount %s names no volume", m.Name)
		}
		mounts[m.MountPath] = m
	}

	policy, ok := mounts[policyDir]
	switch {
	case !ok:
		t.Errorf("nothing is mounted at %s", policyDir)
	case policy.SubPath != "" || policy.SubPathExpr != "":
		t.Error("the policy is a subPath mount, which never receives ConfigMap updates")
	case vols[policy.Name].ConfigMap == nil || vols[policy.Name].ConfigMap.Name != "metaguard-policy" || len(vols[policy.Name].ConfigMap.Items) != 0:
		t.Errorf("%s is not the whole metaguard-policy ConfigMap: %+v", policyDir, vols[policy.Name])
	case !policy.ReadOnly:
		t.Error("the policy mount is writable")
	}

	lock, ok := mounts[xtablesLck]
	if !ok {
		t.Errorf("nothing is mounted at %s, so metaguard would race kube-proxy and the CNI", xtablesLck)
	} else if hp := vols[lock.Name].HostPath; hp == nil || hp.Type == nil || *hp.Type != corev1.HostPathFileOrCreate || lock.SubPath != "" {
		t.Errorf("%s is not the host's lock file (hostPath FileOrCreate): %+v", xtablesLck, vols[lock.Name])
	}
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
