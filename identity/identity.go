package identity

import (
	"context"
	"errors"
	"net/netip"
)

// Identity is a consistent snapshot of one pod, as policy sees it.
//
// Maps are shared with the cache that produced them and must be treated as
// read-only: copying them on every lookup would put allocations on the
// request path for no gain.
type Identity struct {
	Namespace       string
	Name            string
	UID             string
	ServiceAccount  string
	Labels          map[string]string
	NamespaceLabels map[string]string
}

// String returns "namespace/name", the form used in logs and deny messages.
func (id Identity) String() string {
	if id.Name == "" {
		return ""
	}
	return id.Namespace + "/" + id.Name
}

// Sentinel errors of a lookup; check them with errors.Is.
var (
	// ErrNotFound means no live pod on this node owns the address, even after
	// waiting for the informer to catch up.
	ErrNotFound = errors.New("no pod owns this address")
	// ErrAmbiguous means two live pods claim the address (an IP reused while
	// the old pod's deletion has not been seen yet). Denying is the only safe
	// answer: either pod could be the caller.
	ErrAmbiguous = errors.New("more than one pod claims this address")
)

// Resolver maps a source address to the pod that owns it.
type Resolver interface {
	Lookup(ctx context.Context, addr netip.Addr) (Identity, error)
}

// ResolverFunc adapts a function to a Resolver.
type ResolverFunc func(ctx context.Context, addr netip.Addr) (Identity, error)

// Lookup calls f.
func (f ResolverFunc) Lookup(ctx context.Context, addr netip.Addr) (Identity, error) {
	return f(ctx, addr)
}
