package deploy

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

const nodeTaintArg = "--node-taint=" + nodeTaintKey

// nodeTaintKey has the prefix the cluster autoscaler reads as a startup
// taint.
const nodeTaintKey = "startup-taint.cluster-autoscaler.kubernetes.io/metaguard-not-ready"

// policyDoc is the part of the policy format these tests check. The full
// format is validated by `metaguard validate`; here only the deployment's
// own promises are: safe rollout, default deny, the cloud's endpoints, and
// credentials only behind an admin-set namespace label.
type policyDoc struct {
	APIVersion    string `json:"apiVersion"`
	Kind          string `json:"kind"`
	Mode          string `json:"mode"`
	DefaultAction string `json:"defaultAction"`
	Endpoints     []struct {
		Name    string `json:"name"`
		Address string `json:"address"`
		Flavor  string `json:"flavor"`
	} `json:"endpoints"`
	Rules []struct {
		Name              string                `json:"name"`
		NamespaceSelector *metav1.LabelSelector `json:"namespaceSelector"`
		Endpoints         []string              `json:"endpoints"`
		Credentials       string                `json:"credentials"`
	} `json:"rules"`
}

type overlay struct {
	dir string
	// endpoints maps endpoint name to "address flavor".
	endpoints map[string]string
	// blocked endpoints must be out of every rule's reach.
	blocked []string
	// extra kinds the overlay adds to the base.
	extra []string
}

var overlays = []overlay{
	{
		dir: "overlays/aws",
		endpoints: map[string]string{
			"aws":    "169.254.169.254:80 aws",
			"aws-v6": "[fd00:ec2::254]:80 aws",
		},
	},
	{
		dir: "overlays/gcp",
		endpoints: map[string]string{
			"gcp":    "169.254.169.254:80 gcp",
			"gcp-v6": "[fd20:ce::254]:80 gcp",
		},
		extra: []string{"ResourceQuota"},
	},
	{
		dir: "overlays/azure",
		endpoints: map[string]string{
			"azure":                "169.254.169.254:80 azure",
			"wireserver":           "168.63.129.16:80 generic",
			"wireserver-hostagent": "168.63.129.16:32526 generic",
		},
		blocked: []string{"wireserver", "wireserver-hostagent"},
	},
}

var basePolicy = overlay{dir: "base", endpoints: map[string]string{"imds": "169.254.169.254:80 generic"}}

func checkPolicy(t *testing.T, o overlay, data []byte) {
	t.Helper()
	var p policyDoc
	if err := yaml.Unmarshal(data, &p); err != nil {
		t.Fatalf("%s policy: %v", o.dir, err)
	}
	if p.APIVersion != "metaguard.dev/v1alpha1" || p.Kind != "Policy" {
		t.Errorf("apiVersion %q kind %q", p.APIVersion, p.Kind)
	}
	if p.Mode != "audit" {
		t.Errorf("mode = %q: a fresh install starts in audit, the rollout of docs/operations.md", p.Mode)
	}
	if p.DefaultAction != "deny" {
		t.Errorf("defaultAction = %q, want deny", p.DefaultAction)
	}
	got := map[string]string{}
	for _, e := range p.Endpoints {
		if _, err := netip.ParseAddrPort(e.Address); err != nil {
			t.Errorf("endpoint %s: %v", e.Name, err)
		}
		got[e.Name] = e.Address + " " + e.Flavor
	}
	if !reflect.DeepEqual(got, o.endpoints) {
		t.Errorf("endpoints = %v, want %v", got, o.endpoints)
	}
	for _, r := range p.Rules {
		if r.Credentials == "allow" && (r.NamespaceSelector == nil ||
			len(r.NamespaceSelector.MatchLabels)+len(r.NamespaceSelector.MatchExpressions) == 0) {
			t.Errorf("rule %s hands out credentials without a namespaceSelector, so anyone who can label a pod gets them", r.Name)
		}
		for _, b := range o.blocked {
			if len(r.Endpoints) == 0 || slices.Contains(r.Endpoints, b) {
				t.Errorf("rule %s can reach endpoint %s, which no rule may allow", r.Name, b)
			}
		}
	}
}

func TestShippedPolicies(t *testing.T) {
	t.Run("the base ConfigMap policy starts in audit with default deny on the generic endpoint", func(t *testing.T) {
		cm := find[*corev1.ConfigMap](t, loadDir(t, "base"), "ConfigMap", "metaguard-policy")
		checkPolicy(t, basePolicy, []byte(cm.Data[policyKey]))
	})
	for _, o := range overlays {
		t.Run(fmt.Sprintf("the %s policy starts in audit with default deny on that cloud's endpoints", o.dir), func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join(o.dir, policyKey))
			if err != nil {
				t.Fatal(err)
			}
			checkPolicy(t, o, data)
		})
	}
}

func TestOverlayKustomizations(t *testing.T) {
	for _, o := range overlays {
		t.Run(fmt.Sprintf("%s builds on the base and replaces the policy ConfigMap without a hash suffix", o.dir), func(t *testing.T) {
			k := readKustomization(t, o.dir)
			if !slices.Contains(k.Resources, "../../base") {
				t.Errorf("resources %v do not include ../../base", k.Resources)
			}
			for _, r := range k.Resources {
				if _, err := os.Stat(filepath.Join(o.dir, r)); err != nil {
					t.Errorf("resource %s: %v", r, err)
				}
			}
			if len(k.ConfigMapGenerator) != 1 {
				t.Fatalf("want one configMapGenerator, got %d", len(k.ConfigMapGenerator))
			}
			g := k.ConfigMapGenerator[0]
			if g.Name != "metaguard-policy" || g.Namespace != namespace || g.Behavior != "replace" ||
				!slices.Equal(g.Files, []string{policyKey}) {
				t.Errorf("generator %+v does not replace metaguard/metaguard-policy with %s", g, policyKey)
			}
			// A hash suffix would rename the ConfigMap on every policy edit
			// and restart every node's metaguard instead of reloading live.
			if !g.Options.DisableNameSuffixHash {
				t.Error("the generated ConfigMap gets a hash suffix")
			}
		})
	}
}

// TestRenderedOverlays builds each kustomization as `kubectl apply -k`
// would and checks the objects that would reach the API server.
func TestRenderedOverlays(t *testing.T) {
	base := kustomizeBuild(t, "base")
	baseDS := find[*appsv1.DaemonSet](t, base, "DaemonSet", "metaguard")

	cases := []struct {
		name      string
		dir       string
		policy    string // file whose bytes the ConfigMap must carry; "" = base's
		nodeTaint bool
		extra     []string
	}{
		{name: "the base", dir: "base"},
		{name: "the AWS overlay", dir: "overlays/aws", policy: "overlays/aws/policy.yaml"},
		{name: "the GCP overlay", dir: "overlays/gcp", policy: "overlays/gcp/policy.yaml", extra: []string{"ResourceQuota"}},
		{name: "the Azure overlay", dir: "overlays/azure", policy: "overlays/azure/policy.yaml"},
		{name: "the node-taint overlay", dir: "overlays/node-taint", nodeTaint: true},
	}
	for _, c := range cases {
		t.Run(c.name+" renders the base objects with only its own changes", func(t *testing.T) {
			objs := kustomizeBuild(t, c.dir)
			checkRendered(t, objs, baseDS, c.nodeTaint, c.extra)
			if c.policy != "" {
				want, err := os.ReadFile(c.policy)
				if err != nil {
					t.Fatal(err)
				}
				cm := find[*corev1.ConfigMap](t, objs, "ConfigMap", "metaguard-policy")
				if !bytes.Equal([]byte(cm.Data[policyKey]), want) {
					t.Errorf("the rendered ConfigMap does not carry %s byte for byte", c.policy)
				}
			}
		})
	}

	t.Run("the node-taint component composes with a cloud overlay as docs/operations.md shows", func(t *testing.T) {
		// An operator's own kustomization, elsewhere on disk; kustomize
		// accepts only relative paths to other kustomizations.
		dir := t.TempDir()
		rel := func(p string) string {
			a, err := filepath.Abs(p)
			if err != nil {
				t.Fatal(err)
			}
			r, err := filepath.Rel(dir, a)
			if err != nil {
				t.Fatal(err)
			}
			return r
		}
		k := fmt.Sprintf("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - %s\ncomponents:\n  - %s\n",
			rel("overlays/aws"), rel("components/node-taint"))
		if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o644); err != nil {
			t.Fatal(err)
		}
		objs := kustomizeBuild(t, dir)
		checkRendered(t, objs, baseDS, true, nil)
		cm := find[*corev1.ConfigMap](t, objs, "ConfigMap", "metaguard-policy")
		checkPolicy(t, overlays[0], []byte(cm.Data[policyKey]))
	})
}

func checkRendered(t *testing.T, objs []object, baseDS *appsv1.DaemonSet, nodeTaint bool, extra []string) {
	t.Helper()
	for _, o := range objs {
		if o.obj.GetLabels()[appLabel] != "metaguard" {
			t.Errorf("%s %s lacks the app label", o.kind, o.obj.GetName())
		}
	}
	checkReadOnlyRole(t, find[*rbacv1.ClusterRole](t, objs, "ClusterRole", "metaguard"))
	checkBinding(t, find[*rbacv1.ClusterRoleBinding](t, objs, "ClusterRoleBinding", "metaguard"), "metaguard")
	for _, kind := range extra {
		if countKind(objs, kind) != 1 {
			t.Errorf("want one %s", kind)
		}
	}

	ds := find[*appsv1.DaemonSet](t, objs, "DaemonSet", "metaguard")
	checkDaemonSet(t, ds)
	checkMergeKeysUnique(t, ds)
	args := ds.Spec.Template.Spec.Containers[0].Args
	if got := slices.Contains(args, nodeTaintArg); got != nodeTaint {
		t.Errorf("args %q: %s present = %v, want %v", args, nodeTaintArg, got, nodeTaint)
	}
	// Apart from that one flag, every overlay runs the base's DaemonSet.
	stripped := ds.DeepCopy()
	c := &stripped.Spec.Template.Spec.Containers[0]
	c.Args = slices.DeleteFunc(slices.Clone(c.Args), func(a string) bool { return a == nodeTaintArg })
	if !reflect.DeepEqual(stripped.Spec, baseDS.Spec) {
		t.Error("the overlay changes the DaemonSet beyond the node-taint flag")
	}

	// Write access to nodes exists only with the node-taint component.
	var nodeRoles []string
	for _, o := range objs {
		if r, ok := o.obj.(*rbacv1.ClusterRole); ok {
			for _, rule := range r.Rules {
				if slices.Contains(rule.Resources, "nodes") {
					nodeRoles = append(nodeRoles, r.Name)
				}
			}
		}
	}
	if !nodeTaint {
		if len(nodeRoles) != 0 {
			t.Errorf("ClusterRoles %v grant access to nodes without the node-taint component", nodeRoles)
		}
		return
	}
	r := find[*rbacv1.ClusterRole](t, objs, "ClusterRole", "metaguard-node-taint")
	want := []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "patch"}}}
	if !equalRules(r.Rules, want) {
		t.Errorf("metaguard-node-taint rules = %+v, want %+v", r.Rules, want)
	}
	checkBinding(t, find[*rbacv1.ClusterRoleBinding](t, objs, "ClusterRoleBinding", "metaguard-node-taint"), "metaguard-node-taint")
}

// checkMergeKeysUnique catches what server-side apply refuses and
// client-side apply silently merges: two list entries with the same merge
// key.
func checkMergeKeysUnique(t *testing.T, ds *appsv1.DaemonSet) {
	t.Helper()
	dup := func(what string, keys []string) {
		seen := map[string]bool{}
		for _, k := range keys {
			if seen[k] {
				t.Errorf("duplicate %s %q", what, k)
			}
			seen[k] = true
		}
	}
	spec := ds.Spec.Template.Spec
	var vols []string
	for _, v := range spec.Volumes {
		vols = append(vols, v.Name)
	}
	dup("volume", vols)
	for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
		var env, mounts, ports []string
		for _, e := range c.Env {
			env = append(env, e.Name)
		}
		for _, m := range c.VolumeMounts {
			mounts = append(mounts, m.MountPath)
		}
		for _, p := range c.Ports {
			ports = append(ports, fmt.Sprintf("%d/%s", p.ContainerPort, p.Protocol))
		}
		dup("env in "+c.Name, env)
		dup("mountPath in "+c.Name, mounts)
		dup("port in "+c.Name, ports)
	}
}

func TestCleanupDaemonSet(t *testing.T) {
	objs := loadDir(t, "cleanup")
	ds := find[*appsv1.DaemonSet](t, objs, "DaemonSet", "metaguard-cleanup")
	spec := ds.Spec.Template.Spec

	t.Run("it runs metaguard cleanup on every node in the node's network namespace", func(t *testing.T) {
		if ds.Namespace != namespace || !spec.HostNetwork {
			t.Errorf("namespace %q hostNetwork %v", ds.Namespace, spec.HostNetwork)
		}
		if !slices.ContainsFunc(spec.Tolerations, func(tol corev1.Toleration) bool {
			return tol.Key == "" && tol.Operator == corev1.TolerationOpExists && tol.Effect == ""
		}) {
			t.Error("it does not tolerate every taint, so tainted nodes keep their rules")
		}
		if len(spec.InitContainers) != 1 || !slices.Equal(spec.InitContainers[0].Args, []string{"cleanup"}) ||
			len(spec.InitContainers[0].Command) != 0 {
			t.Fatalf("init containers %+v do not run the image's metaguard with the cleanup subcommand", spec.InitContainers)
		}
	})

	t.Run("it has the daemon's rights and no more", func(t *testing.T) {
		init := spec.InitContainers[0]
		checkContainerSecurity(t, init)
		checkMergeKeysUnique(t, ds)
		var lock bool
		for _, m := range init.VolumeMounts {
			lock = lock || m.MountPath == xtablesLck
		}
		if !lock {
			t.Errorf("cleanup does not take the host's %s", xtablesLck)
		}
		for _, v := range spec.Volumes {
			if v.HostPath != nil && v.HostPath.Path != xtablesLck {
				t.Errorf("hostPath %s", v.HostPath.Path)
			}
		}
		if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
			t.Error("cleanup talks to no API server, yet gets a token")
		}
		for _, c := range spec.Containers {
			if sc := c.SecurityContext; sc == nil || sc.Capabilities == nil || len(sc.Capabilities.Add) != 0 ||
				sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
				t.Errorf("container %s, which only waits, should run as non-root without capabilities", c.Name)
			}
		}
	})

	t.Run("it uses the same image name as the daemon, so one set-image covers both", func(t *testing.T) {
		daemon := find[*appsv1.DaemonSet](t, loadDir(t, "base"), "DaemonSet", "metaguard")
		want := daemon.Spec.Template.Spec.Containers[0].Image
		for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
			if c.Image != want {
				t.Errorf("container %s image %q, want %q", c.Name, c.Image, want)
			}
		}
	})
}
