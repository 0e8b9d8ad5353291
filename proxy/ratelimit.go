package proxy

import (
	"sync"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/time/rate"

	"metaguard.dev/metaguard/proxy/policy"
)

// podLimiterSize bounds the token buckets kept: far above the pods a node
// runs, so a bucket is only evicted for a pod long gone.
const podLimiterSize = 4096

// podLimiter keeps one token bucket per pod, so one noisy pod exhausts its
// own budget and not the node's IMDS quota (AWS throttles per instance).
type podLimiter struct {
	mu      sync.Mutex
	limit   policy.RateLimit
	buckets *lru.Cache[string, *rate.Limiter]
}

func newPodLimiter() *podLimiter {
	c, err := lru.New[string, *rate.Limiter](podLimiterSize)
	if err != nil {
		panic(err) // only for a non-positive size
	}
	return &podLimiter{buckets: c}
}

// allow takes a token from key's bucket under limit; a zero limit allows
// everything. A changed limit (policy reload) starts every bucket afresh.
func (p *podLimiter) allow(key string, limit policy.RateLimit) bool {
	if limit.RequestsPerSecond <= 0 {
		return true
	}
	p.mu.Lock()
	if limit != p.limit {
		p.buckets.Purge()
		p.limit = limit
	}
	b, ok := p.buckets.Get(key)
	if !ok {
		b = rate.NewLimiter(rate.Limit(limit.RequestsPerSecond), limit.Burst)
		p.buckets.Add(key, b)
	}
	p.mu.Unlock()
	return b.Allow()
}
