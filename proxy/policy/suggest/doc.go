// Package suggest turns audit logs into a least-privilege policy: the
// `metaguard suggest` command.
//
// It owns reading audit logs (JSON lines, plain or gzip, streamed so that
// memory grows with the distinct groups and paths seen, never with the
// number of lines), grouping pods (by a label, service account or
// namespace), collapsing families of sibling paths into * and ** patterns,
// and writing the policy YAML with comments for review. It must not widen
// anything in the credential class: credential paths are only ever listed
// literally, in a rule of their own that says credentials: allow, and a
// pattern is only made where nothing below it can be a credential path of
// the endpoint. It knows the policy semantics only through package policy
// (Parse, IsCredential, Explain, Decide) and checks its own output with
// Parse; it must not re-implement path matching or the credential class.
//
// Public surface: New, Suggester (ReadLog, Stats, Policy), Options,
// GroupBy (String), GroupKind (ByLabel, ByServiceAccount, ByNamespace),
// ParseGroupBy, DefaultCollapseThreshold, Stats, Suggestion.
package suggest
