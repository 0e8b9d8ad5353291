// Package proxy serves the metadata endpoints that redirect rules send pod
// traffic to, and is the only place a pod's request is judged.
//
// A request flows through small stages, each one job, in the order of
// docs/design.md: endpoint (the connection's original destination),
// identify (source IP to pod through an identity.Resolver, first, so that
// even a refused probe is attributed to its pod), canonicalise (refuse
// anything that is not a plain origin-form request the flavor's API serves,
// with a canonical path, known query keys and no body where the API defines
// none), refuse forwarding headers and unidentified pods, decide
// (policy.Decide, pure), rate-limit and admit within the budget, then
// forward, strip or deny, and finally audit (one record through
// proxy/audit) and count (Prometheus). The path matched is byte for byte
// the path forwarded.
//
// It must not import client-go or touch the kernel: identities come through
// identity.Resolver, the original destination of a connection through a
// function the caller supplies, so everything here runs under httptest.
//
// Everything it holds for a pod is bounded by one memory budget (Budget,
// BudgetFor): connections, requests in flight, long polls and strip
// buffers, in total and per source; past a cap work is refused at once.
//
// Public surface: Config, Budget, BudgetFor, DefaultRequestPathBytes,
// Server (New, ServeHTTP, Serve), ServeAdmin, Canonicalize,
// CanonicalRequest, RequestError, StripListing, StripJSON, StripText.
package proxy
