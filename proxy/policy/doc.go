// Package policy parses, validates and evaluates metaguard's Policy file.
//
// It owns the policy format (metaguard.dev/v1alpha1, kind Policy), the
// built-in knowledge about each cloud's metadata API (credential paths,
// known query keys, allowed methods, host names), path patterns, and the pure
// decision function. It does no I/O on the request path and knows nothing of
// HTTP serving, Kubernetes clients or the kernel: the proxy hands it an
// identity.Identity and a canonical Request and gets a Decision back.
//
// Public surface: Parse, Load, FailClosed, Policy (Decide, Explain,
// CanRead, GrantsCredentials, Invalid, Endpoints, EndpointFor,
// EndpointByName, RuleNames), Request, Decision, Action, Endpoint
// (MethodAllowed, Serves, AcceptsBody, AnswerHeaders, QueryKeys,
// IdentityKeys, UpstreamHost, IsCredential), Flavor, Mode, Store (the
// hot-reloaded current policy, failing closed until a valid one is read),
// CanonicalPath and ValidationError.
package policy
