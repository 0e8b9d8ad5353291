package sandbox

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// kubeletConfig is the kubelet's configuration for this machine family:
//   - cgroupfs under the run's own cgroupRoot, and failCgroupV1: false:
//     the hierarchies are v1 (hybrid) without systemd, which kubelets from
//     1.35 on refuse unless told otherwise;
//   - failSwapOn: false, whatever the machine's swap;
//   - every directory it would otherwise put outside its root directory
//     (volume plugins default to /usr/libexec, pod logs to /var/log/pods)
//     under the run directory, logs among the artifacts;
//   - the sync period and the ConfigMap watch short, so that a ConfigMap
//     edit reaches a pod's volume within seconds, not a minute or two;
//   - eviction thresholds low: a busy CI disk must not evict the pods
//     under test;
//   - authentication by client certificate (the API server's) and
//     authorization by the API server (Webhook), as on any real cluster.
const kubeletConfig = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
cgroupRoot: /%[1]s
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://%[2]s
imageServiceEndpoint: unix://%[2]s
volumePluginDir: %[3]s
podLogsDir: %[4]s
resolvConf: %[5]s
staticPodPath: ""
address: %[6]s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: %[7]s
tlsPrivateKeyFile: %[8]s
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %[9]s}
authorization:
  mode: Webhook
syncFrequency: 5s
nodeStatusUpdateFrequency: 4s
configMapAndSecretChangeDetectionStrategy: Watch
registerWithTaints: %[10]s
evictionHard:
  memory.available: 100Mi
  nodefs.available: "1%%"
  nodefs.inodesFree: "1%%"
  imagefs.available: "1%%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
maxPods: 50
shutdownGracePeriod: 0s
`

// taintsYAML renders --register-with-taints style taints
// (key[=value]:Effect) as the config's registerWithTaints list.
func taintsYAML(taints []string) (string, error) {
	if len(taints) == 0 {
		return "[]", nil
	}
	var items []string
	for _, t := range taints {
		kv, effect, ok := strings.Cut(t, ":")
		if !ok || effect == "" {
			return "", fmt.Errorf("taint %q: want key[=value]:Effect", t)
		}
		key, value, _ := strings.Cut(kv, "=")
		items = append(items, fmt.Sprintf("{key: %q, value: %q, effect: %q}", key, value, effect))
	}
	return "[" + strings.Join(items, ", ") + "]", nil
}

// startKubelet starts the kubelet in the node's namespaces as node-a, with
// its identity, config and directories in the run directory.
func (s *Sandbox) startKubelet(taints []string) error {
	dir := filepath.Join(s.node.dir, "kubelet")
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.MkdirAll(filepath.Join(dir, "root"), 0o700); err != nil {
		return err
	}
	if err := s.writeClientKubeconfig(kubeconfig, "kubelet"); err != nil {
		return err
	}
	taintList, err := taintsYAML(taints)
	if err != nil {
		return err
	}
	// An empty resolv.conf: pods here talk to addresses only, and the
	// machine's resolver must not leak into them.
	resolv := filepath.Join(dir, "resolv.conf")
	serving := s.pki.certs["kubelet-serving"]
	cfg := fmt.Sprintf(kubeletConfig, s.cgroupRoot(), s.node.socket, filepath.Join(dir, "volume-plugins"),
		filepath.Join(s.artifacts, "pods"), resolv, HostIP, serving.certFile, serving.keyFile, s.pki.caFile, taintList)
	for name, data := range map[string]string{filepath.Join(dir, "config.yaml"): cfg, resolv: ""} {
		if err := os.WriteFile(name, []byte(data), 0o600); err != nil {
			return err
		}
	}
	argv := s.nodeArgv(s.nodeNetns(), filepath.Join(s.binDir, "kubelet"),
		"--config="+filepath.Join(dir, "config.yaml"),
		"--kubeconfig="+kubeconfig,
		"--root-dir="+filepath.Join(dir, "root"),
		// Its PKI directory defaults to /var/lib/kubelet/pki, outside
		// --root-dir.
		"--cert-dir="+filepath.Join(dir, "pki"),
		"--hostname-override="+NodeName,
		"--node-ip="+HostIP.String(),
		"--v=1",
	)
	p, err := s.startProc(procSpec{name: "kubelet", path: argv[0], args: argv[1:], disposable: true})
	if err != nil {
		return err
	}
	s.node.kubelet = p
	return nil
}

// startControllers starts kube-controller-manager (the DaemonSet,
// namespace, service account and token controllers, the root CA publisher
// that projected service account volumes need) and kube-scheduler in the
// node namespace, as a kubeadm control-plane node runs them, without
// leader election: there is one of each.
func (s *Sandbox) startControllers() error {
	for _, c := range []struct {
		name, cert string
		args       []string
	}{
		{"kube-controller-manager", "controller-manager", []string{
			"--use-service-account-credentials=true",
			"--service-account-private-key-file=" + s.pki.saKey,
			"--root-ca-file=" + s.pki.caFile,
			"--controllers=*,-bootstrapsigner,-tokencleaner,-csrsigning",
			"--node-monitor-grace-period=20s",
		}},
		{"kube-scheduler", "scheduler", nil},
	} {
		kubeconfig := filepath.Join(s.node.dir, c.name+".kubeconfig")
		if err := s.writeClientKubeconfig(kubeconfig, c.cert); err != nil {
			return err
		}
		args := append([]string{"--kubeconfig=" + kubeconfig, "--leader-elect=false", "--bind-address=127.0.0.1"}, c.args...)
		if _, err := s.startProc(procSpec{netns: s.nodeNetns(), name: c.name, path: filepath.Join(s.binDir, c.name), args: args, disposable: true}); err != nil {
			return err
		}
	}
	return nil
}

// writeClientKubeconfig writes a kubeconfig for one of the PKI's client
// certificates.
func (s *Sandbox) writeClientKubeconfig(path, cert string) error {
	pair := s.pki.certs[cert]
	return s.writeKubeconfig(path, cert, &clientcmdapi.AuthInfo{ClientCertificateData: pair.certPEM, ClientKeyData: pair.keyPEM})
}
