package podindex

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Lookup results, the values of metaguard_identity_lookups_total{result}.
const (
	resultFound     = "found"
	resultWaited    = "waited"
	resultUnknown   = "unknown"
	resultAmbiguous = "ambiguous"
)

// Resources watched, the values of metaguard_identity_watch_errors_total{resource}.
const (
	resourcePods       = "pods"
	resourceNamespaces = "namespaces"
)

type metrics struct {
	// One child per result, resolved once: WithLabelValues on every lookup
	// would hash and may allocate on the hit path.
	found, waited, unknown, ambiguous prometheus.Counter

	podsTracked prometheus.Gauge
	synced      prometheus.Gauge
	watchErrors *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	lookups := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "metaguard_identity_lookups_total",
		Help: "Source address lookups by result: found (in the cache), waited (found after waiting for the informer), unknown, ambiguous (two live pods claim the address).",
	}, []string{"result"})
	m := &metrics{
		found:     lookups.WithLabelValues(resultFound),
		waited:    lookups.WithLabelValues(resultWaited),
		unknown:   lookups.WithLabelValues(resultUnknown),
		ambiguous: lookups.WithLabelValues(resultAmbiguous),
		podsTracked: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "metaguard_pods_tracked",
			Help: "Live pods on this node indexed by IP (hostNetwork, Succeeded and Failed pods are not).",
		}),
		synced: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "metaguard_identity_synced",
			Help: "1 once the pods and namespaces informers have synced; it stays 1 while the API server is unreachable, because cached identities keep answering.",
		}),
		watchErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "metaguard_identity_watch_errors_total",
			Help: "Failed list or watch calls to the API server, by resource. Rising means the cache is going stale; the informers retry on their own.",
		}, []string{"resource"}),
	}
	// Zero-valued series exist from the start, so alerts on rate() and
	// absence work before the first failure.
	m.watchErrors.WithLabelValues(resourcePods)
	m.watchErrors.WithLabelValues(resourceNamespaces)

	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{lookups, m.podsTracked, m.synced, m.watchErrors} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering identity metrics: %w", err)
		}
	}
	return m, nil
}
