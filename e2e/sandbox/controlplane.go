package sandbox

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// APIServerURL is where the API server listens, on the node namespace's
// loopback, as a kubeadm static-pod API server does on its node. Only
// processes in the node namespace (metaguard) and sockets opened there
// (NetnsDialer) reach it.
const APIServerURL = "https://127.0.0.1:6443"

const (
	etcdClientURL = "http://127.0.0.1:2379"
	etcdPeerURL   = "http://127.0.0.1:2380"
	// serviceAccountIssuer is what kubeadm uses; tokens carry it as iss.
	serviceAccountIssuer = "https://kubernetes.default.svc.cluster.local"
)

// startControlPlane starts etcd and kube-apiserver in the node namespace
// together (the API server retries etcd until it answers) and waits until
// the API server's /readyz is 200.
func (s *Sandbox) startControlPlane(ctx context.Context) error {
	p, err := newPKI(s.pkiDir)
	if err != nil {
		return err
	}
	s.pki = p
	s.admin = &rest.Config{
		Host: APIServerURL,
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   p.caPEM,
			CertData: p.certs["admin"].certPEM,
			KeyData:  p.certs["admin"].keyPEM,
		},
		Dial:      NetnsDialer(s.nodeNetns()),
		QPS:       200,
		Burst:     400,
		UserAgent: "metaguard-e2e-harness",
	}
	client, err := kubernetes.NewForConfig(s.admin)
	if err != nil {
		return fmt.Errorf("building admin client: %w", err)
	}
	s.client = client

	etcdDir := filepath.Join(s.dir, "etcd")
	if err := os.MkdirAll(etcdDir, 0o700); err != nil {
		return fmt.Errorf("creating etcd data dir: %w", err)
	}
	etcd, err := s.startProc(procSpec{netns: s.nodeNetns(), name: "etcd", path: filepath.Join(s.binDir, "etcd"), disposable: true, args: []string{
		"--name=e2e",
		"--data-dir=" + etcdDir,
		"--listen-client-urls=" + etcdClientURL,
		"--advertise-client-urls=" + etcdClientURL,
		"--listen-peer-urls=" + etcdPeerURL,
		"--initial-advertise-peer-urls=" + etcdPeerURL,
		"--initial-cluster=e2e=" + etcdPeerURL,
		// A throw-away store: durability buys nothing and fsync costs
		// seconds on a busy CI disk.
		"--unsafe-no-fsync=true",
		"--log-level=warn",
	}})
	if err != nil {
		return err
	}
	apiserver, err := s.startProc(procSpec{netns: s.nodeNetns(), name: "kube-apiserver", path: filepath.Join(s.binDir, "kube-apiserver"), disposable: true, args: append([]string{
		"--etcd-servers=" + etcdClientURL,
		"--bind-address=127.0.0.1",
		"--secure-port=6443",
		"--advertise-address=" + HostIP.String(),
		"--cert-dir=" + filepath.Join(s.dir, "apiserver"),
		"--tls-cert-file=" + p.certs["apiserver"].certFile,
		"--tls-private-key-file=" + p.certs["apiserver"].keyFile,
		"--client-ca-file=" + p.caFile,
		// As in production clusters: the e2e proves that the RBAC shipped
		// in deploy/ is enough, so nothing may be allowed by default.
		"--authorization-mode=Node,RBAC",
		"--service-account-issuer=" + serviceAccountIssuer,
		"--service-account-key-file=" + p.saPub,
		"--service-account-signing-key-file=" + p.saKey,
		"--service-cluster-ip-range=10.96.0.0/16",
		"--allow-privileged=true",
		// No controller manager runs, so nothing would maintain the
		// endpoints of the kubernetes service.
		"--endpoint-reconciler-type=none",
		"--profiling=false",
	}, s.apiserverNodeArgs()...)})
	if err != nil {
		return err
	}

	httpClient, err := rest.HTTPClientFor(s.admin)
	if err != nil {
		return fmt.Errorf("building admin HTTP client: %w", err)
	}
	err = pollUntil(ctx, 60*time.Second, 100*time.Millisecond, func() (bool, error) {
		for _, p := range []*Process{etcd, apiserver} {
			if ok, werr := p.Exited(); ok {
				return false, fmt.Errorf("%s exited (%v):\n%s", p.Name, werr, p.tail(20))
			}
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, APIServerURL+"/readyz", nil)
		if err != nil {
			return false, err
		}
		resp, err := httpClient.Do(req)
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for kube-apiserver /readyz: %w\n%s", err, apiserver.tail(20))
	}
	s.apiserver = apiserver
	return nil
}

// APIServerProcess is the running kube-apiserver. A test of an API outage
// can SIGSTOP it (connections hang, as to a partitioned control plane) and
// SIGCONT it again; Healthy counts only an exit as breakage.
func (s *Sandbox) APIServerProcess() *Process { return s.apiserver }

// pollUntil calls cond every interval until it returns true or an error,
// or until timeout or ctx ends.
func pollUntil(ctx context.Context, timeout, interval time.Duration, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("gave up after %v: %w", timeout, ctx.Err())
		case <-tick.C:
		}
	}
}

// AdminConfig is a cluster-admin rest.Config whose connections are opened
// in the node namespace. Callers may copy and change it.
func (s *Sandbox) AdminConfig() *rest.Config { return rest.CopyConfig(s.admin) }

// AdminClient is a cluster-admin clientset (system:masters).
func (s *Sandbox) AdminClient() kubernetes.Interface { return s.client }

// AdminKubeconfig is a cluster-admin kubeconfig file, usable from the node
// namespace: ip netns exec <NodeNetns> kubectl --kubeconfig <file> ...
func (s *Sandbox) AdminKubeconfig() string { return s.adminKubeconfig }
