package podindex

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/watchlist"
)

// Retry delays while the API server cannot be reached: each wait is drawn
// from [d, 1.5d), d doubling from retryInitial up to retryMax.
const (
	retryInitial = 500 * time.Millisecond
	retryMax     = 8 * time.Second
)

// retryingListWatch retries list and watch calls itself while the API
// server cannot be reached, instead of handing the error to the reflector.
// The reflector's own backoff grows to between 30 and 60 seconds, so after
// an outage of half a minute a pod that started meanwhile stayed unknown,
// and denied, for up to a minute after the API server was back. Here a
// retry comes at most 12 s after the API server returns. Errors that are
// an answer from a working API server (403, 410 Gone, ...) go to the
// reflector at once, as before.
//
// Every failed attempt is counted, so
// metaguard_identity_watch_errors_total is an outage signal.
type retryingListWatch struct {
	lw          *cache.ListWatch
	noWatchList bool // the client cannot serve watch-list (the fake)
	resource    string
	failures    prometheus.Counter
	log         *slog.Logger
	initial     time.Duration
	max         time.Duration

	mu        sync.Mutex
	downSince time.Time // zero while calls succeed
}

func newRetryingListWatch(lw *cache.ListWatch, client any, resource string, m *metrics, log *slog.Logger) *retryingListWatch {
	return &retryingListWatch{
		lw:          lw,
		noWatchList: watchlist.DoesClientNotSupportWatchListSemantics(client),
		resource:    resource,
		failures:    m.watchErrors.WithLabelValues(resource),
		log:         log,
		initial:     retryInitial,
		max:         retryMax,
	}
}

// IsWatchListSemanticsUnSupported passes on what the client supports, as
// the informer factory's own ListWatch does.
func (r *retryingListWatch) IsWatchListSemanticsUnSupported() bool { return r.noWatchList }

func (r *retryingListWatch) List(opts metav1.ListOptions) (runtime.Object, error) {
	return r.ListWithContext(context.Background(), opts)
}

func (r *retryingListWatch) Watch(opts metav1.ListOptions) (watch.Interface, error) {
	return r.WatchWithContext(context.Background(), opts)
}

func (r *retryingListWatch) ListWithContext(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
	return retry(ctx, r, func() (runtime.Object, error) { return r.lw.ListWithContextFunc(ctx, opts) })
}

func (r *retryingListWatch) WatchWithContext(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	return retry(ctx, r, func() (watch.Interface, error) { return r.lw.WatchFuncWithContext(ctx, opts) })
}

func retry[T any](ctx context.Context, r *retryingListWatch, call func() (T, error)) (T, error) {
	delay := r.initial
	for {
		v, err := call()
		if err == nil {
			r.reachable()
			return v, nil
		}
		if !unreachable(err) || ctx.Err() != nil {
			return v, err
		}
		r.unreachable(err)
		t := time.NewTimer(delay + rand.N(delay/2+1))
		select {
		case <-ctx.Done():
			t.Stop()
			return v, err
		case <-t.C:
		}
		delay = min(2*delay, r.max)
	}
}

// unreachable tells an API server that could not be reached, or asked to
// be called back later, from one that answered.
func unreachable(err error) bool {
	return utilnet.IsConnectionRefused(err) || utilnet.IsConnectionReset(err) ||
		utilnet.IsProbableEOF(err) || utilnet.IsTimeout(err) ||
		apierrors.IsTooManyRequests(err) || apierrors.IsServiceUnavailable(err) ||
		apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err)
}

func (r *retryingListWatch) unreachable(err error) {
	r.failures.Inc()
	r.mu.Lock()
	first := r.downSince.IsZero()
	if first {
		r.downSince = time.Now()
	}
	r.mu.Unlock()
	if first {
		r.log.Warn("API server unreachable; cached identities keep answering, retrying",
			"resource", r.resource, "error", err, "max_retry_delay", r.max)
	}
}

func (r *retryingListWatch) reachable() {
	r.mu.Lock()
	since := r.downSince
	r.downSince = time.Time{}
	r.mu.Unlock()
	if !since.IsZero() {
		r.log.Info("API server reachable again", "resource", r.resource, "after", time.Since(since).Round(time.Millisecond))
	}
}
