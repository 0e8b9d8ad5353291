// Package podindex answers identity.Resolver lookups from client-go
// informers: source IP -> the live pod on this node that owns it.
//
// It owns the pods informer (restricted to spec.nodeName=<node> by a field
// selector, so memory and watch traffic grow with this node's pods, not the
// cluster's), the namespaces informer (for namespace labels), the IP index
// built from their events, the bounded negative cache of addresses that are
// never pods, and the identity metrics.
//
// It must not call the API server on the request path: a lookup reads the
// in-memory index, waits for an informer event if the address is not there
// yet, and otherwise answers unknown. It must not decide anything about
// policy; it only names the caller. RBAC it needs: get, list and watch on pods
// and namespaces, nothing else.
//
// Public surface: Options (and its defaults), New, Index (Run, HasSynced,
// WaitForSync, Lookup, Len), IdentityOf, PodFieldSelector.
package podindex
