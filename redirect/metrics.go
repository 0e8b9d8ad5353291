package redirect

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	syncs   *prometheus.CounterVec
	repairs prometheus.Counter
}

// newMetrics registers the package's collectors on reg; a nil reg keeps them
// unregistered (tests that do not read metrics).
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		syncs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "metaguard_redirect_syncs_total",
			Help: "Rule syncs by result (ok, error).",
		}, []string{"result"}),
		repairs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "metaguard_redirect_repairs_total",
			Help: "Syncs that found metaguard's installed rules changed by something else (deleted, flushed, reordered) and restored them.",
		}),
	}
	// Both results exist from the start so that rate() and alerts on
	// result="error" work before the first failure.
	m.syncs.WithLabelValues("ok")
	m.syncs.WithLabelValues("error")
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.syncs, m.repairs} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering redirect metrics: %w", err)
		}
	}
	return m, nil
}
