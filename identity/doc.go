// Package identity names who is calling: the pod behind a source IP.
//
// It owns the value types and the one-method Resolver interface that the
// proxy depends on, and nothing else. It must not import client-go: the
// informer-backed implementation lives in identity/podindex, so the proxy
// (and its tests) can know identities without knowing Kubernetes.
//
// Public surface: Identity, Resolver, ErrNotFound, ErrAmbiguous.
package identity
