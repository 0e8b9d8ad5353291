package sandbox

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
)

// ExecOptions is the environment a command runs in inside a pod, beyond
// the pod's network namespace: what a kubelet and a container runtime give
// a container.
type ExecOptions struct {
	// Env entries (KEY=value) are added to the test process's environment.
	Env []string
	// Files maps an absolute path (say /etc/resolv.conf) to the content
	// the command sees there. Each is bind-mounted over the node's file in
	// a mount namespace of the command's own, so nothing outside the
	// command sees it; the path must exist.
	Files map[string]string
}

var execFiles atomic.Int64

// ExecInPodWith runs a command in the pod's network namespace like
// ExecInPod, with opts' environment and files.
func (s *Sandbox) ExecInPodWith(ctx context.Context, pod *Pod, opts ExecOptions, args ...string) ([]byte, error) {
	if pod.Netns == "" {
		return nil, fmt.Errorf("pod %s has no network namespace on this node", pod)
	}
	var pre []string
	if len(opts.Env) > 0 {
		pre = append(append([]string{"env"}, opts.Env...), pre...)
	}
	if len(opts.Files) > 0 {
		dir := filepath.Join(s.dir, "exec", strconv.FormatInt(execFiles.Add(1), 10))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		// ip netns exec already runs the command in a new mount
		// namespace whose mounts do not propagate back; unshare's private
		// propagation makes that hold whatever ip does.
		script := `set -e; while [ "$1" != "--" ]; do mount --bind "$1" "$2"; shift 2; done; shift; exec "$@"`
		mounts := []string{"unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"}
		i := 0
		for target, content := range opts.Files {
			if !filepath.IsAbs(target) {
				return nil, fmt.Errorf("file %q: the path must be absolute", target)
			}
			src := filepath.Join(dir, strconv.Itoa(i))
			i++
			if err := os.WriteFile(src, []byte(content), 0o644); err != nil {
				return nil, err
			}
			mounts = append(mounts, src, target)
		}
		pre = append(append(mounts, "--"), pre...)
	}
	return execIn(ctx, pod.Netns, append(pre, args...)...)
}

// PodClientWith runs bin/podclient in the pod like PodClient, with opts'
// environment and files (the GCP client needs the pod's resolv.conf).
func (s *Sandbox) PodClientWith(ctx context.Context, pod *Pod, opts ExecOptions, args ...string) (PodClientResult, error) {
	return s.runClient(ctx, pod, opts, append([]string{filepath.Join(s.binDir, "podclient")}, args...))
}

// PodJSClient runs bin/jsclient/imds.js (the AWS SDK for JavaScript v3's
// instance metadata credential provider) with the machine's Node.js in the
// pod, with args such as "creds" and opts' environment
// (AWS_EC2_METADATA_SERVICE_ENDPOINT picks another endpoint).
func (s *Sandbox) PodJSClient(ctx context.Context, pod *Pod, opts ExecOptions, args ...string) (PodClientResult, error) {
	script := filepath.Join(s.binDir, "jsclient", "imds.js")
	if _, err := os.Stat(script); err != nil {
		return PodClientResult{}, fmt.Errorf("%w: %s (make bin/jsclient)", ErrPrerequisite, script)
	}
	return s.runClient(ctx, pod, opts, append([]string{"node", script}, args...))
}

func (s *Sandbox) runClient(ctx context.Context, pod *Pod, opts ExecOptions, argv []string) (PodClientResult, error) {
	var res PodClientResult
	out, err := s.ExecInPodWith(ctx, pod, opts, argv...)
	if err != nil {
		return res, err
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return res, fmt.Errorf("decoding the output of %s: %q: %w", strings.Join(argv, " "), out, err)
	}
	return res, nil
}
