package proxy

import (
	"fmt"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"metaguard.dev/metaguard/proxy/audit"
	"metaguard.dev/metaguard/proxy/policy"
)

// metrics of the request path. Labels never carry pod names or paths:
// their cardinality would grow with the cluster.
type metrics struct {
	requests       *prometheus.CounterVec
	denied         *prometheus.CounterVec
	duration       *prometheus.HistogramVec
	upstreamErrors *prometheus.CounterVec
	*connMetrics

	// children caches the series of each kind of finished request:
	// WithLabelValues hashes its labels and takes the vector's lock on
	// every call, three times per request. The key's values are the
	// labels', so the cache is no larger than the vectors.
	mu       sync.RWMutex
	children map[requestKind]requestSeries
}

// requestKind is what observe labels a request by.
type requestKind struct {
	endpoint string
	decision audit.Decision
	status   int
	reason   audit.Reason
}

type requestSeries struct {
	requests prometheus.Counter
	duration prometheus.Observer
	denied   prometheus.Counter // nil unless the decision is deny
}

// alertedReasons are the denial reasons alerts take a rate of: their
// series exist at zero from the start, so that the first event is an
// increase and not the birth of a series at 1, which rate() cannot see.
var alertedReasons = []audit.Reason{audit.ReasonUnknownPod, audit.ReasonPolicyInvalid, audit.ReasonOverloaded, audit.ReasonCredentialPath}

// ensureSeries makes the alerted series of every endpoint of p.
func (m *metrics) ensureSeries(p *policy.Policy) {
	for _, ep := range p.Endpoints() {
		m.upstreamErrors.WithLabelValues(ep.Name)
		for _, r := range alertedReasons {
			m.denied.WithLabelValues(ep.Name, r.String())
		}
	}
}

// connMetrics are a limited listener's: what it holds, refuses and closes
// to make room.
type connMetrics struct {
	connsRejected *prometheus.CounterVec
	connsEvicted  prometheus.Counter
	connsOpen     prometheus.Gauge
}

func newConnMetrics(prefix, what string) *connMetrics {
	m := &connMetrics{
		connsRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: prefix + "connections_rejected_total",
			Help: what + " connections closed at accept because a limit was reached (per_source, total).",
		}, []string{"limit"}),
		connsEvicted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: prefix + "connections_evicted_total",
			Help: what + " connections closed to make room for another source's new connection at the total limit: idle ones, half-sent ones, or ones that sent nothing yet.",
		}),
		connsOpen: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: prefix + "connections_open",
			Help: what + " connections currently open.",
		}),
	}
	for _, limit := range []string{"per_source", "total"} {
		m.connsRejected.WithLabelValues(limit)
	}
	return m
}

func (m *connMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.connsRejected, m.connsEvicted, m.connsOpen}
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "metaguard_requests_total",
			Help: "Requests by endpoint, decision (allow, strip, deny, audit-deny) and response code.",
		}, []string{"endpoint", "decision", "code"}),
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "metaguard_denied_requests_total",
			Help: "Refused requests by endpoint and reason (a bounded set of codes: unknown-pod, not-allowed-by-rules, credential-path, malformed-request, ...).",
		}, []string{"endpoint", "reason"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "metaguard_request_duration_seconds",
			Help: "Time from request headers read to response written, by endpoint and decision.",
			// From a cached deny (tens of microseconds) to a GCP long poll.
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10, 60},
		}, []string{"endpoint", "decision"}),
		upstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "metaguard_upstream_errors_total",
			Help: "Forwarded requests that failed upstream (connection error, timeout, unstrippable response), by endpoint.",
		}, []string{"endpoint"}),
		connMetrics: newConnMetrics("metaguard_", "Client"),
		children:    map[requestKind]requestSeries{},
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range append([]prometheus.Collector{m.requests, m.denied, m.duration, m.upstreamErrors}, m.collectors()...) {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering proxy metrics: %w", err)
		}
	}
	return m, nil
}

// observe counts one finished request.
func (m *metrics) observe(rec *audit.Record) {
	k := requestKind{endpoint: rec.Endpoint, decision: rec.Decision, status: rec.Status}
	if rec.Decision == audit.DecisionDeny {
		k.reason = rec.Reason
	}
	m.mu.RLock()
	c, ok := m.children[k]
	m.mu.RUnlock()
	if !ok {
		c = m.series(k)
	}
	c.requests.Inc()
	c.duration.Observe(rec.Duration.Seconds())
	if c.denied != nil {
		c.denied.Inc()
	}
}

func (m *metrics) series(k requestKind) requestSeries {
	decision := k.decision.String()
	c := requestSeries{
		requests: m.requests.WithLabelValues(k.endpoint, decision, strconv.Itoa(k.status)),
		duration: m.duration.WithLabelValues(k.endpoint, decision),
	}
	if k.decision == audit.DecisionDeny {
		c.denied = m.denied.WithLabelValues(k.endpoint, k.reason.String())
	}
	m.mu.Lock()
	m.children[k] = c
	m.mu.Unlock()
	return c
}
