package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"metaguard.dev/metaguard/e2e/sandbox"
)

// The fast upstream stand-in's content: what an AWS IMDS answers for the
// two paths the benchmark reads. The listing holds iam/, so that the strip
// row has an entry to remove.
const (
	instanceID   = "i-0b22a22eec53b9321"
	metaListing  = "ami-id\nami-launch-index\nami-manifest-path\nblock-device-mapping/\nevents/\nhostname\niam/\nidentity-credentials/\ninstance-action\ninstance-id\ninstance-life-cycle\ninstance-type\nlocal-hostname\nlocal-ipv4\nmac\nmetrics/\nnetwork/\nplacement/\nprofile\nreservation-id\nsecurity-groups\nservices/"
	nginxCommon  = "daemon off;\nmaster_process on;\nworker_processes %[2]s;\n# Workers must read files in the sandbox's private directory.\nuser root;\npid %[1]s/nginx.pid;\nerror_log %[1]s/error.log warn;\nevents { worker_connections 4096; }\n"
	nginxHTTPTop = "  access_log off;\n  client_body_temp_path %[1]s/tmp/body;\n  proxy_temp_path %[1]s/tmp/proxy;\n  fastcgi_temp_path %[1]s/tmp/fastcgi;\n  uwsgi_temp_path %[1]s/tmp/uwsgi;\n  scgi_temp_path %[1]s/tmp/scgi;\n  # One wrk connection keeps its connection for the whole run, as\n  # metaguard's Go server lets it.\n  keepalive_requests 1000000;\n  keepalive_timeout 75s;\n  tcp_nodelay on;\n"
)

// upstreamConf serves static files: instance-id, and the meta-data listing
// as the directory's index.
func upstreamConf(prefix string, listen netip.AddrPort) string {
	return fmt.Sprintf(nginxCommon, prefix, "auto") + "http {\n" + fmt.Sprintf(nginxHTTPTop, prefix) + fmt.Sprintf(
		"  default_type text/plain;\n  sendfile on;\n  open_file_cache max=64;\n  server {\n    listen %s;\n    root %s/www;\n    index index.txt;\n  }\n}\n",
		listen, prefix)
}

// proxyConf is the reference L7 reverse proxy on the node: one listener
// per upstream, HTTP/1.1 keep-alive to the upstream as metaguard's
// transport keeps, the client's Host passed on.
func proxyConf(prefix string, ups ...upstream) string {
	var b strings.Builder
	// One worker: the reference is one event loop, as in the issue's
	// measurement.
	b.WriteString(fmt.Sprintf(nginxCommon, prefix, "1") + "http {\n" + fmt.Sprintf(nginxHTTPTop, prefix))
	for i, r := range ups {
		fmt.Fprintf(&b, "  upstream u%d {\n    server %s;\n    keepalive 64;\n  }\n", i, r.addr)
		fmt.Fprintf(&b, "  server {\n    listen %s;\n    location / {\n      proxy_pass http://u%d;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_set_header Host $http_host;\n    }\n  }\n", r.nginxListen, i)
	}
	b.WriteString("}\n")
	return b.String()
}

// startNginx writes conf under prefix and runs nginx in the foreground in
// netns, then waits until addr accepts connections from the node.
func startNginx(ctx context.Context, s *sandbox.Sandbox, netns, prefix, conf string, files map[string]string, addrs ...netip.AddrPort) (*sandbox.Process, error) {
	for _, d := range []string{"tmp", "www"} {
		if err := os.MkdirAll(filepath.Join(prefix, d), 0o700); err != nil {
			return nil, err
		}
	}
	for name, content := range files {
		p := filepath.Join(prefix, "www", name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return nil, err
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			return nil, err
		}
	}
	confPath := filepath.Join(prefix, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	nginx, err := lookTool("nginx")
	if err != nil {
		return nil, err
	}
	// -e: without it nginx opens /var/log/nginx/error.log before reading
	// the configuration.
	p, err := s.StartProcess(netns, nginx, "-p", prefix, "-c", confPath, "-e", filepath.Join(prefix, "error.log"))
	if err != nil {
		return nil, err
	}
	// Polled every 10 ms for at most 10 s.
	dial := sandbox.NetnsDialer(s.NodeNetns())
	deadline := time.Now().Add(10 * time.Second)
	for _, a := range addrs {
		for {
			if done, werr := p.Exited(); done {
				b, _ := p.Stderr()
				return p, fmt.Errorf("nginx exited (%v): %s", werr, b)
			}
			dctx, cancel := context.WithTimeout(ctx, time.Second)
			c, err := dial(dctx, "tcp", a.String())
			cancel()
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return p, fmt.Errorf("waiting for nginx on %s: %w", a, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return p, nil
}
