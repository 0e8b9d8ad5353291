// Package proxy serves the metadata endpoints that redirect rules send pod
// traffic to, and is the only place a pod's request is judged.
//
// A request flows through small stages, each one job, in the order of
// docs/design.md: endpoint (the connection's original destination),
// identify (source IP to pod through an identity.Resolver, first, so that
// even a refused probe is attributed to its pod), canonicalise (refuse
// anything that is not a plain origin-form GET, HEAD or PUT with a canonical
// path and known query keys), refuse forwarding headers, decide
// (policy.Decide, pure), rate-limit, then forward, strip or deny, and
// finally audit (one JSON line) and count (Prometheus). The path matched is
// byte for byte the path forwarded.
//
// It must not import client-go or touch the kernel: identities come through
// identity.Resolver, the original destination of a connection through a
// function the caller supplies, so everything here runs under httptest.
//
// Public surface: Config, Server (New, ServeHTTP, Serve), Canonicalize,
// CanonicalRequest, RequestError, StripListing, StripJSON, StripText.
package proxy
