package sandbox

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"metaguard.dev/metaguard/e2e/fakecloud"
)

// TestSandbox is the harness's own smoke test: real etcd, kube-apiserver,
// IMDS mock and namespaces, no metaguard.
func TestSandbox(t *testing.T) {
	if err := CheckPrerequisites(Options{}); err != nil {
		t.Skipf("the sandbox cannot run here: %v", err)
	}
	rootBefore := rootNamespaceState(t)
	begin := time.Now()
	s := StartT(t, Options{})
	t.Logf("sandbox started in %v", time.Since(begin).Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	if err := s.ApplyManifests(ctx, "testdata/manifests"); err != nil {
		t.Fatal(err)
	}

	t.Run("RBAC forbids a ServiceAccount without a binding and allows one with it", func(t *testing.T) {
		for _, tc := range []struct {
			sa      string
			allowed bool
		}{{"nobody", false}, {"reader", true}} {
			client := serviceAccountClient(ctx, t, s, "smoke", tc.sa)
			_, err := client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
			if tc.allowed && err != nil {
				t.Errorf("%s: listing pods: %v", tc.sa, err)
			}
			if !tc.allowed && !apierrors.IsForbidden(err) {
				t.Errorf("%s: listing pods gave %v, want Forbidden", tc.sa, err)
			}
		}
	})

	pod, err := s.AddPod(ctx, PodSpec{Namespace: "smoke", Name: "app", Labels: map[string]string{"app": "smoke"}, ServiceAccount: "reader"})
	if err != nil {
		t.Fatal(err)
	}
	other, err := s.AddPod(ctx, PodSpec{Namespace: "smoke", Name: "elsewhere", Node: OtherNodeName})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("pods carry their node, service account and IPs in the API", func(t *testing.T) {
		for _, p := range []*Pod{pod, other} {
			obj, err := s.AdminClient().CoreV1().Pods(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if obj.Spec.NodeName != p.Node || obj.Status.Phase != "Running" || len(obj.Status.PodIPs) != 2 ||
				obj.Status.PodIPs[0].IP != p.IP.String() || obj.Status.PodIPs[1].IP != p.IPv6.String() {
				t.Errorf("pod %s: node %q phase %q IPs %v, want %s Running [%s %s]",
					p, obj.Spec.NodeName, obj.Status.Phase, obj.Status.PodIPs, p.Node, p.IP, p.IPv6)
			}
		}
		if other.Netns != "" {
			t.Errorf("the node-b pod has a namespace here: %s", other.Netns)
		}
		if obj, _ := s.AdminClient().CoreV1().Pods("smoke").Get(ctx, "app", metav1.GetOptions{}); obj.Spec.ServiceAccountName != "reader" {
			t.Errorf("service account %q, want reader", obj.Spec.ServiceAccountName)
		}
	})

	t.Run("a pod reaches the AWS IMDS mock through the node over IPv4 and IPv6", func(t *testing.T) {
		for _, url := range []string{
			"http://169.254.169.254/latest/meta-data/instance-id",
			"http://[fd00:ec2::254]/latest/meta-data/instance-id",
			"http://192.168.100.21:32000/latest/meta-data/instance-id",
		} {
			status, body := httpGet(t, s.PodHTTPClient(pod), url, nil)
			if status != 200 || !strings.HasPrefix(body, "i-") {
				t.Errorf("GET %s: %d %q", url, status, body)
			}
		}
	})

	t.Run("the IMDSv2-only mock refuses a request without a token", func(t *testing.T) {
		status, _ := httpGet(t, s.PodHTTPClient(pod), "http://169.254.169.250/latest/meta-data/instance-id", nil)
		if status != http.StatusUnauthorized {
			t.Errorf("status %d, want 401", status)
		}
	})

	t.Run("the AWS SDK in the pod reads metadata and role credentials", func(t *testing.T) {
		for _, args := range [][]string{
			{"aws-get", "instance-id"},
			{"aws-creds"},
			{"-no-fallback", "-endpoint", "http://169.254.169.250", "aws-get", "instance-id"},
		} {
			res, err := s.PodClient(ctx, pod, args...)
			if err != nil {
				t.Fatal(err)
			}
			if !res.OK {
				t.Errorf("podclient %v: %+v", args, res)
			}
		}
	})

	t.Run("an added cloud address is routed from a pod to the cloud namespace", func(t *testing.T) {
		addr := netip.MustParseAddrPort("169.254.169.249:80")
		dial := func() error {
			dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			c, err := NetnsDialer(pod.Netns)(dctx, "tcp", addr.String())
			if err == nil {
				c.Close()
			}
			return err
		}
		// Refused means a namespace owning the address answered with a
		// reset; before the address exists the node has no route for it.
		if err := dial(); errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("before AddCloudAddress: %v, want no route", err)
		}
		if err := s.AddCloudAddress(ctx, addr.Addr()); err != nil {
			t.Fatal(err)
		}
		if err := dial(); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("after AddCloudAddress: %v, want connection refused by the cloud namespace", err)
		}
	})

	t.Run("the fake GCP and Azure upstreams answer pods and record their headers", func(t *testing.T) {
		for _, tc := range []struct {
			flavor fakecloud.Flavor
			url    string
			header string
			value  string
		}{
			{fakecloud.GCP, "http://169.254.169.252/computeMetadata/v1/instance/id", "Metadata-Flavor", "Google"},
			{fakecloud.Azure, "http://169.254.169.251/metadata/instance?api-version=2021-02-01", "Metadata", "true"},
		} {
			status, body := httpGet(t, s.PodHTTPClient(pod), tc.url, map[string]string{tc.header: tc.value, "X-Smoke": "1"})
			if status != 200 {
				t.Errorf("%s: %d %q", tc.flavor, status, body)
			}
			recs, err := s.CloudRecords(ctx, tc.flavor)
			if err != nil {
				t.Fatal(err)
			}
			if len(recs) != 1 || recs[0].Header.Get(tc.header) != tc.value || recs[0].Header.Get("X-Smoke") != "1" ||
				!strings.HasPrefix(recs[0].RemoteAddr, pod.IP.String()+":") {
				t.Errorf("%s records: %+v", tc.flavor, recs)
			}
			if err := s.ResetCloudRecords(ctx, tc.flavor); err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("a deleted pod loses its namespace and its object", func(t *testing.T) {
		gone, err := s.AddPod(ctx, PodSpec{Name: "short-lived"})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.DeletePod(ctx, gone); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat("/run/netns/" + gone.Netns); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("namespace %s still exists (%v)", gone.Netns, err)
		}
		if _, err := s.AdminClient().CoreV1().Pods("default").Get(ctx, gone.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("pod object still there: %v", err)
		}
	})

	t.Run("Close removes every namespace and process", func(t *testing.T) {
		s.mu.Lock()
		procs := append([]*Process(nil), s.procs...)
		s.mu.Unlock()
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		names, err := listNetns()
		if err != nil {
			t.Fatal(err)
		}
		if i := slices.IndexFunc(names, func(n string) bool { return strings.HasPrefix(n, s.Prefix+"-") }); i >= 0 {
			t.Errorf("namespace %s survived Close", names[i])
		}
		for _, p := range procs {
			if err := syscall.Kill(p.Pid(), 0); !errors.Is(err, syscall.ESRCH) {
				t.Errorf("%s (pid %d) survived Close", p.Name, p.Pid())
			}
		}
		if _, err := os.Stat(s.dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("run directory %s survived Close", s.dir)
		}
	})

	t.Run("the root namespace gained no interface, rule or forwarding", func(t *testing.T) {
		after := rootNamespaceState(t)
		for what, lines := range after {
			for _, l := range lines {
				if !slices.Contains(rootBefore[what], l) {
					t.Errorf("%s gained %q", what, l)
				}
			}
		}
	})
}

// rootNamespaceState is what the sandbox must never add to: the machine's
// interfaces, iptables rules and forwarding switches. Only additions are
// checked, so that something else on the machine removing a rule meanwhile
// does not fail the test.
func rootNamespaceState(t *testing.T) map[string][]string {
	t.Helper()
	state := map[string][]string{}
	run := func(what string, name string, args ...string) {
		out, err := exec.Command(name, args...).Output()
		if err != nil {
			t.Logf("%s: %v (not compared)", what, err)
			return
		}
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, "#") {
				continue
			}
			// Chain counters change with traffic; the rules do not.
			state[what] = append(state[what], counters.ReplaceAllString(l, ""))
		}
	}
	run("links", "sh", "-c", "ip -o link show | cut -d: -f2")
	run("iptables", "iptables-save")
	run("ip6tables", "ip6tables-save")
	for _, k := range []string{"ipv4/ip_forward", "ipv6/conf/all/forwarding"} {
		b, err := os.ReadFile("/proc/sys/net/" + k)
		if err == nil {
			state[k] = []string{strings.TrimSpace(string(b))}
		}
	}
	return state
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

func serviceAccountClient(ctx context.Context, t *testing.T, s *Sandbox, ns, name string) kubernetes.Interface {
	t.Helper()
	path, err := s.ServiceAccountKubeconfig(ctx, ns, name)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Dial = NetnsDialer(s.NodeNetns())
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return client
}

func httpGet(t *testing.T, c *http.Client, url string, header map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
