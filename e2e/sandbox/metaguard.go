package sandbox

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// MetaguardNamespace and MetaguardServiceAccount are the identity deploy/
// gives metaguard; StartMetaguard runs it as that ServiceAccount, so the
// e2e fails if the shipped RBAC is not enough.
const (
	MetaguardNamespace      = "metaguard"
	MetaguardServiceAccount = "metaguard"
	metaguardDaemonSet      = "metaguard"
)

// StartMetaguard runs `bin/metaguard run` in the node namespace as node-a
// with --host-ip HostIP and a kubeconfig holding a token of the metaguard
// ServiceAccount (apply deploy/base first), plus args (--config, ...;
// later flags win), and with the Go runtime settings of the applied
// DaemonSet (GOGC, GOMEMLIMIT, GOMAXPROCS). It returns once /readyz on the metrics port answers
// 200, or with an error carrying the end of metaguard's log.
func (s *Sandbox) StartMetaguard(ctx context.Context, args ...string) (*Process, error) {
	p, err := s.StartMetaguardUnready(ctx, args...)
	if err != nil {
		return nil, err
	}
	if err := s.WaitReady(ctx, p, metricsAddr(args)); err != nil {
		return p, err
	}
	return p, nil
}

// StartMetaguardUnready starts metaguard like StartMetaguard but returns at
// once, for a test of what it does before it is ready (or when it never
// becomes ready: a fresh node with a broken policy).
func (s *Sandbox) StartMetaguardUnready(ctx context.Context, args ...string) (*Process, error) {
	kubeconfig, err := s.ServiceAccountKubeconfig(ctx, MetaguardNamespace, MetaguardServiceAccount)
	if err != nil {
		return nil, err
	}
	argv := append([]string{
		"run",
		"--node-name=" + NodeName,
		"--host-ip=" + HostIP.String(),
		"--kubeconfig=" + kubeconfig,
	}, args...)
	env, err := s.shippedGoEnv(ctx)
	if err != nil {
		return nil, err
	}
	return s.startProc(procSpec{netns: s.nodeNetns(), name: "metaguard", path: filepath.Join(s.binDir, "metaguard"), args: argv, env: env})
}

// WaitReady polls http://addr/readyz from the node namespace until it is
// 200, the process exits, or 30s pass.
func (s *Sandbox) WaitReady(ctx context.Context, p *Process, addr string) error {
	client := s.NodeHTTPClient()
	client.Timeout = time.Second
	var last string
	err := pollUntil(ctx, 30*time.Second, 50*time.Millisecond, func() (bool, error) {
		if ok, werr := p.Exited(); ok {
			return false, fmt.Errorf("%s exited (%v)", p.Name, werr)
		}
		resp, err := client.Get("http://" + addr + "/readyz")
		if err != nil {
			last = err.Error()
			return false, nil
		}
		resp.Body.Close()
		last = resp.Status
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for %s /readyz on %s (last: %s): %w\n%s", p.Name, addr, last, err, p.tail(30))
	}
	return nil
}

// metricsAddr finds metaguard's --metrics-listen in args and makes it
// dialable: ":9181" means the node's loopback.
func metricsAddr(args []string) string {
	addr := ":9181"
	for i, a := range args {
		switch {
		case strings.HasPrefix(a, "--metrics-listen="):
			addr = strings.TrimPrefix(a, "--metrics-listen=")
		case a == "--metrics-listen" && i+1 < len(args):
			addr = args[i+1]
		}
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	if _, err := strconv.Atoi(port); err != nil {
		return addr
	}
	return net.JoinHostPort(host, port)
}
