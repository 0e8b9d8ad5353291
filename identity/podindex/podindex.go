package podindex

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"metaguard.dev/metaguard/identity"
)

// Defaults for the zero values of Options.
const (
	DefaultNegativeCacheSize = 1024
	DefaultNegativeTTL       = 10 * time.Second
)

// Options configure an Index.
type Options struct {
	// NodeName is the node whose pods are watched (required): the pods
	// informer asks the API server only for spec.nodeName=NodeName.
	NodeName string
	// Wait is how long Lookup waits for an address that is not in the cache
	// (a pod that just started, seen by the kernel before the informer) before
	// answering unknown. Zero answers unknown at once.
	Wait time.Duration
	// NegativeCacheSize bounds how many addresses that stayed unknown for a
	// full Wait are remembered; default DefaultNegativeCacheSize.
	NegativeCacheSize int
	// NegativeTTL is how long such an address is answered unknown without
	// waiting again; default DefaultNegativeTTL. A pod that appears with the
	// address clears it at once.
	NegativeTTL time.Duration
	// Logger receives operational logs; nil discards them.
	Logger *slog.Logger
}

func (o *Options) validate() error {
	switch {
	case o.NodeName == "":
		return errors.New("node name is required: only this node's pods are watched")
	case o.Wait < 0:
		return fmt.Errorf("identity wait %s is negative", o.Wait)
	case o.NegativeCacheSize < 0:
		return fmt.Errorf("negative cache size %d is negative", o.NegativeCacheSize)
	case o.NegativeTTL < 0:
		return fmt.Errorf("negative cache TTL %s is negative", o.NegativeTTL)
	}
	if o.NegativeCacheSize == 0 {
		o.NegativeCacheSize = DefaultNegativeCacheSize
	}
	if o.NegativeTTL == 0 {
		o.NegativeTTL = DefaultNegativeTTL
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Index resolves source addresses to the live pods of one node. It implements
// identity.Resolver. Build it with New, start it with Run.
type Index struct {
	opts    Options
	log     *slog.Logger
	metrics *metrics

	// Two factories because a factory's list options apply to every informer
	// it makes, and the node field selector means nothing to namespaces.
	podFactory, nsFactory informers.SharedInformerFactory
	podReg, nsReg         cache.ResourceEventHandlerRegistration

	// negative remembers addresses that stayed unknown for a full wait, so a
	// flood from addresses that are never pods is answered at once, in
	// bounded memory. Values are expiry times: the expirable variant of this
	// package starts a goroutine per cache that can never be stopped.
	negative *lru.Cache[netip.Addr, time.Time]

	mu       sync.RWMutex
	pods     map[string]*podEntry         // by namespace/name, the informer's key
	byIP     map[netip.Addr][]*podEntry   // more than one entry = ambiguous
	nsLabels map[string]map[string]string // namespace name -> labels; present = seen
	changed  chan struct{}                // closed on any index change; nil while nobody waits

	started atomic.Bool
	synced  chan struct{} // closed once both handlers have seen their initial lists
}

var _ identity.Resolver = (*Index)(nil)

// New builds an Index on client and registers its metrics on reg (nil
// registers nowhere). Nothing talks to the API server until Run.
func New(client kubernetes.Interface, opts Options, reg prometheus.Registerer) (*Index, error) {
	if client == nil {
		return nil, errors.New("kubernetes client is nil")
	}
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("checking pod index options: %w", err)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	negative, err := lru.New[netip.Addr, time.Time](opts.NegativeCacheSize)
	if err != nil {
		return nil, fmt.Errorf("building negative cache: %w", err)
	}
	x := &Index{
		opts:     opts,
		log:      opts.Logger,
		metrics:  m,
		negative: negative,
		pods:     make(map[string]*podEntry),
		byIP:     make(map[netip.Addr][]*podEntry),
		nsLabels: make(map[string]map[string]string),
		synced:   make(chan struct{}),
	}

	selector := PodFieldSelector(opts.NodeName)
	// The factories own start, shutdown and the transforms; the informers
	// are built here to put a retrying list-watch under them.
	x.podFactory = informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTransform(slimPod),
	)
	x.nsFactory = informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTransform(slimNamespace),
	)

	pods, namespaces := client.CoreV1().Pods(metav1.NamespaceAll), client.CoreV1().Namespaces()
	onNode := func(o metav1.ListOptions) metav1.ListOptions { o.FieldSelector = selector; return o }
	podInformer := x.podFactory.InformerFor(&corev1.Pod{}, x.retryingInformer(client, &corev1.Pod{}, resourcePods, m,
		func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return pods.List(ctx, onNode(o))
		},
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return pods.Watch(ctx, onNode(o))
		}))
	nsInformer := x.nsFactory.InformerFor(&corev1.Namespace{}, x.retryingInformer(client, &corev1.Namespace{}, resourceNamespaces, m,
		func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return namespaces.List(ctx, o)
		},
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return namespaces.Watch(ctx, o)
		}))
	if err := podInformer.SetWatchErrorHandlerWithContext(x.watchErrorHandler(resourcePods)); err != nil {
		return nil, fmt.Errorf("setting pods watch error handler: %w", err)
	}
	if err := nsInformer.SetWatchErrorHandlerWithContext(x.watchErrorHandler(resourceNamespaces)); err != nil {
		return nil, fmt.Errorf("setting namespaces watch error handler: %w", err)
	}
	if x.podReg, err = podInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    x.onPod,
		UpdateFunc: func(_, obj any) { x.onPod(obj) },
		DeleteFunc: x.onPodDelete,
	}); err != nil {
		return nil, fmt.Errorf("adding pods event handler: %w", err)
	}
	if x.nsReg, err = nsInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    x.onNamespace,
		UpdateFunc: func(_, obj any) { x.onNamespace(obj) },
		DeleteFunc: x.onNamespaceDelete,
	}); err != nil {
		return nil, fmt.Errorf("adding namespaces event handler: %w", err)
	}
	return x, nil
}

// retryingInformer builds an informer of obj on list and watch, under a
// list-watch that retries while the API server is unreachable (retry.go).
func (x *Index) retryingInformer(client kubernetes.Interface, obj runtime.Object, resource string, m *metrics,
	list cache.ListWithContextFunc, watch cache.WatchFuncWithContext) func(kubernetes.Interface, time.Duration) cache.SharedIndexInformer {
	return func(kubernetes.Interface, time.Duration) cache.SharedIndexInformer {
		lw := newRetryingListWatch(&cache.ListWatch{ListWithContextFunc: list, WatchFuncWithContext: watch}, client, resource, m, x.log)
		return cache.NewSharedIndexInformerWithOptions(lw, obj, cache.SharedIndexInformerOptions{})
	}
}

// PodFieldSelector is the field selector the pods informer sends: only pods
// scheduled on nodeName, so the API server filters and this node never
// receives other nodes' pods.
func PodFieldSelector(nodeName string) string {
	return fields.OneTermEqualSelector("spec.nodeName", nodeName).String()
}

// Run starts both informers and blocks until ctx is done; every goroutine it
// started has stopped when it returns. It returns nil on cancellation and an
// error only if called twice. The informers reconnect on their own while
// the API server is unreachable; lookups keep answering from the cache.
func (x *Index) Run(ctx context.Context) error {
	if !x.started.CompareAndSwap(false, true) {
		return errors.New("pod index: Run called more than once")
	}
	x.podFactory.StartWithContext(ctx)
	x.nsFactory.StartWithContext(ctx)

	var wg sync.WaitGroup
	wg.Go(func() {
		// The registrations' checkers, not the informers': they complete only
		// once our handlers have processed the initial lists, so readiness
		// never reports an index that is still filling.
		select {
		case <-ctx.Done():
			return
		case <-x.podReg.HasSyncedChecker().Done():
		}
		select {
		case <-ctx.Done():
			return
		case <-x.nsReg.HasSyncedChecker().Done():
		}
		close(x.synced)
		x.metrics.synced.Set(1)
		x.log.Info("pod index synced", "node", x.opts.NodeName, "pods", x.Len())
	})

	<-ctx.Done()
	wg.Wait()
	x.podFactory.Shutdown()
	x.nsFactory.Shutdown()
	return nil
}

// HasSynced reports whether both informers have synced and their initial
// lists are indexed. It stays true while the API server is unreachable.
func (x *Index) HasSynced() bool {
	select {
	case <-x.synced:
		return true
	default:
		return false
	}
}

// WaitForSync blocks until HasSynced or ctx is done, and reports HasSynced.
func (x *Index) WaitForSync(ctx context.Context) bool {
	select {
	case <-x.synced:
		return true
	case <-ctx.Done():
		return x.HasSynced()
	}
}

// Len returns how many live pods are indexed by IP.
func (x *Index) Len() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return len(x.pods)
}

func (x *Index) watchErrorHandler(resource string) cache.WatchErrorHandlerWithContext {
	counter := x.metrics.watchErrors.WithLabelValues(resource)
	return func(_ context.Context, _ *cache.Reflector, err error) {
		switch {
		case errors.Is(err, io.EOF):
			// The server closed a watch at its timeout; the reflector simply
			// watches again.
		case apierrors.IsResourceExpired(err) || apierrors.IsGone(err):
			// etcd compacted past our resource version: a relist follows and
			// the API server is healthy, so this is not an outage.
			x.log.Debug("watch expired; relisting", "resource", resource, "error", err)
		default:
			counter.Inc()
			x.log.Warn("list or watch failed; cached identities keep answering and the informer retries",
				"resource", resource, "error", err)
		}
	}
}
