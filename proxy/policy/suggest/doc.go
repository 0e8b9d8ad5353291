// Package suggest turns audit logs into a least-privilege policy: the
// `metaguard suggest` command.
//
// It owns learning from audit logs (read through package audit, streamed
// so that memory grows with the distinct groups and paths seen, never with
// the number of lines), grouping pods (by a label, service account or
// namespace), collapsing families of sibling paths into * and ** patterns,
// and writing the policy YAML with comments for review.
//
// The pods it judges wrote the log it learns from, so nothing a pod sends
// may become its own grant, nor widen what the other pods of its group
// get beyond what they used:
//   - only the policy's decisions count (audit.Reason.DecidedByPolicy),
//     and only requests the upstream served (2xx; 304 on GCP);
//   - a credential-class request is carried forward only when the policy
//     in force granted it (credentials-allowed, by a rule that still says
//     credentials: allow); any other is listed for review, and becomes a
//     grant only when the operator names its group (GrantCredentials);
//   - a pattern stands only for paths two pods or more used, is never made
//     on a generic endpoint, and never reaches the credential class:
//     credential paths are listed literally, in a rule of their own;
//   - every learned path names the pods behind it.
//
// It knows the policy semantics only through package policy (Parse,
// IsCredential, Explain, Decide, GrantsCredentials) and checks its own
// output with Parse; it must not re-implement path matching or the
// credential class.
//
// Public surface: New, Suggester (ReadLog, Stats, Policy), Options,
// GroupBy (String), GroupKind (ByLabel, ByServiceAccount, ByNamespace),
// ParseGroupBy, DefaultCollapseThreshold, Stats, Suggestion, Review.
package suggest
