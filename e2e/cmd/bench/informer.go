package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"

	"metaguard.dev/metaguard/e2e/sandbox"
)

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// countingBody counts the bytes of a response body as client-go reads it.
type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// countingConn counts the bytes read from the API server.
type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// informerBytes runs a pods informer as metaguard builds it (same
// client-go, JSON, a transform), with or without the field selector, and
// counts the bytes it receives until it has synced.
func informerBytes(ctx context.Context, s *sandbox.Sandbox, label, selector string) (informerRun, error) {
	var n, decoded atomic.Int64
	cfg := s.AdminConfig()
	dial := cfg.Dial
	cfg.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return countingConn{Conn: c, n: &n}, nil
	}
	cfg.UserAgent = "metaguard-bench-informer"
	var (
		mu   sync.Mutex
		reqs []string
	)
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			resp, err := rt.RoundTrip(r)
			how := "error"
			if err == nil {
				// Go's transport removes Content-Encoding when it
				// decompresses the gzip it asked for.
				how = resp.Header.Get("Content-Type")
				if resp.Uncompressed {
					how += ", gzip"
				}
				resp.Body = countingBody{ReadCloser: resp.Body, n: &decoded}
			}
			mu.Lock()
			reqs = append(reqs, fmt.Sprintf("%s %s (%s)", r.Method, r.URL.RequestURI(), how))
			mu.Unlock()
			return resp, err
		})
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return informerRun{}, err
	}
	f := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTweakListOptions(func(lo *metav1.ListOptions) { lo.FieldSelector = selector }),
		// Keep names only: the bytes are the point, not this process's
		// memory.
		informers.WithTransform(func(obj any) (any, error) {
			if p, ok := obj.(*corev1.Pod); ok {
				return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, ResourceVersion: p.ResourceVersion}}, nil
			}
			return obj, nil
		}),
	)
	inf := f.Core().V1().Pods().Informer()
	ictx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	begin := time.Now()
	f.StartWithContext(ictx)
	defer f.Shutdown()
	// Polled every 10 ms: cache.WaitForCacheSync's 100 ms would be the
	// resolution of the small cluster's whole sync time.
	if err := poll(ictx, 10*time.Minute, func() (bool, error) { return inf.HasSynced(), nil }); err != nil {
		return informerRun{}, fmt.Errorf("pods informer (%s) did not sync: %w", label, err)
	}
	run := informerRun{label: label, took: time.Since(begin), bytes: n.Load(), decoded: decoded.Load(), pods: len(inf.GetStore().ListKeys())}
	mu.Lock()
	run.requests = slices.Clone(reqs)
	mu.Unlock()
	cancel()
	return run, nil
}

func podJSONSize(ctx context.Context, s *sandbox.Sandbox, ns, name string) (int, error) {
	body, err := s.AdminClient().CoreV1().RESTClient().Get().Namespace(ns).Resource("pods").Name(name).
		SetHeader("Accept", "application/json").Stream(ctx)
	if err != nil {
		return 0, err
	}
	defer body.Close()
	n, err := io.Copy(io.Discard, body)
	return int(n), err
}
