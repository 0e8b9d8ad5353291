package suggest

import (
	"fmt"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"

	"metaguard.dev/metaguard/proxy/policy"
)

// GroupBy says which pods share a suggested rule.
type GroupBy struct {
	Kind GroupKind
	// Label is the pod label key when Kind is ByLabel.
	Label string
}

// GroupKind is the identity pods are grouped by.
type GroupKind int

// Ways to group pods. Every group also includes the namespace: a rule is
// never suggested across namespaces, since one namespace's use says
// nothing about another's.
const (
	// ByLabel groups pods by the value of one label; pods without the
	// label fall back to ByServiceAccount.
	ByLabel GroupKind = iota
	ByServiceAccount
	ByNamespace
)

// ParseGroupBy parses the --group-by flag: "label=KEY", "serviceaccount"
// or "namespace".
func ParseGroupBy(s string) (GroupBy, error) {
	switch s {
	case "serviceaccount":
		return GroupBy{Kind: ByServiceAccount}, nil
	case "namespace":
		return GroupBy{Kind: ByNamespace}, nil
	}
	key, ok := strings.CutPrefix(s, "label=")
	if !ok {
		return GroupBy{}, fmt.Errorf("group-by must be label=KEY, serviceaccount or namespace, got %q", s)
	}
	if errs := validation.IsQualifiedName(key); len(errs) > 0 {
		return GroupBy{}, fmt.Errorf("group-by label key %q: %s", key, strings.Join(errs, "; "))
	}
	return GroupBy{Kind: ByLabel, Label: key}, nil
}

// String is the flag form of g.
func (g GroupBy) String() string {
	switch g.Kind {
	case ByServiceAccount:
		return "serviceaccount"
	case ByNamespace:
		return "namespace"
	}
	return "label=" + g.Label
}

// Options tune a suggestion.
type Options struct {
	GroupBy GroupBy
	// CollapseThreshold is how many distinct used children a directory
	// needs before they are replaced by one pattern; 0 never collapses.
	// Only children that two pods or more of the group used count.
	CollapseThreshold int
	// Mode of the suggested policy; empty keeps the mode of the policy in
	// force, so a policy learnt in audit mode stays in audit mode until an
	// operator has reviewed it.
	Mode policy.Mode
	// GrantCredentials names groups (as Suggestion.Review names them)
	// whose credential requests the operator has reviewed and grants:
	// their paths are written into a credentials: allow rule. Nothing
	// else ever turns a credential request the policy in force did not
	// grant into a grant.
	GrantCredentials []string
}

// DefaultCollapseThreshold is the default Options.CollapseThreshold: fewer
// siblings than this are more readable, and reviewable, listed one by one.
const DefaultCollapseThreshold = 4

// Suggester collects what each group of pods used from audit logs and
// writes the policy that allows exactly that. It is not safe for
// concurrent use.
type Suggester struct {
	opts      Options
	source    string
	config    []byte
	pol       *policy.Policy
	endpoints map[string]*policy.Endpoint
	groups    map[groupKey]*group
	stats     Stats
	pins      []pinnedEntry
}

// Stats counts the audit lines read, by what became of them.
type Stats struct {
	// Lines is every non-blank line read.
	Lines int64
	// Used lines are what the suggested rules are made of: requests of
	// identified pods that the policy decided, forwarded and the upstream
	// served (2xx; 304 on GCP), and credential reads the policy in force
	// granted.
	Used int64
	// Review lines are credential requests the policy in force did not
	// grant (refused, or forwarded only because of audit mode): listed
	// for review, never learned.
	Review int64
	// NotServed lines were forwarded but not served: a 404 for a path a
	// pod made up, the upstream's 403 or 5xx.
	NotServed int64
	// Denied lines were refused by the policy; they never become rules.
	Denied int64
	// ByProxy lines were decided by the proxy, not the policy: malformed
	// requests, unknown or ambiguous pods, rate limits, overload, and
	// reasons this version does not know.
	ByProxy int64
	// UnknownEndpoint lines name an endpoint the policy in force does not
	// have.
	UnknownEndpoint int64
	// OverBound lines came after their group had used more distinct paths
	// than suggest keeps (Suggestion.Warnings names the groups).
	OverBound int64
	// Other lines are JSON objects without a decision: the daemon's
	// operational log, which kubectl logs mixes in.
	Other int64
	// Malformed lines are not JSON objects, or hold fields no request the
	// proxy decides can have.
	Malformed int64
	// FirstMalformed says where the first malformed line is and why, so
	// an operator can look at it.
	FirstMalformed string
	// Groups is the number of pod groups seen.
	Groups int
}

// Suggestion is a suggested policy.
type Suggestion struct {
	YAML []byte
	// Rules is the number of rules; CredentialRules of those say
	// credentials: allow.
	Rules, CredentialRules int
	// Warnings name what must be reviewed before enforcing: credential
	// reads whose identity the suggestion could not pin, groups that
	// used more paths than suggest keeps.
	Warnings []string
	// Review lists the groups with credential requests that learning did
	// not grant, and those Options.GrantCredentials granted.
	Review []Review
}

// Review is one group's credential requests that the policy in force did
// not grant.
type Review struct {
	// Group is the name Options.GrantCredentials (and the command's
	// --grant-credentials) takes.
	Group string
	// Who says which pods the group is.
	Who string
	// Requests, on Paths distinct paths, by Pods (named as in the output).
	Requests int64
	Paths    int
	Pods     string
	// Granted is set when Options.GrantCredentials named the group.
	Granted bool
}

// New starts a suggestion based on the policy in force, config (named
// source in messages). The suggested policy keeps its endpoints,
// credentialPaths and rateLimit, and its mode unless opts.Mode says
// otherwise; its credential class decides what is never widened.
func New(source string, config []byte, opts Options) (*Suggester, error) {
	if opts.CollapseThreshold < 0 {
		return nil, fmt.Errorf("collapse threshold must be 0 (never) or more, got %d", opts.CollapseThreshold)
	}
	switch opts.Mode {
	case "", policy.ModeAudit, policy.ModeEnforce:
	default:
		return nil, fmt.Errorf("mode must be enforce or audit, got %q", opts.Mode)
	}
	if opts.GroupBy.Kind == ByLabel && opts.GroupBy.Label == "" {
		return nil, fmt.Errorf("grouping by label needs a label key")
	}
	for _, g := range opts.GrantCredentials {
		if g == "" {
			return nil, fmt.Errorf("a group to grant credentials to needs a name")
		}
	}
	pol, err := policy.Parse(source, config)
	if err != nil {
		return nil, fmt.Errorf("parsing the policy in force: %w", err)
	}
	s := &Suggester{
		opts:      opts,
		source:    source,
		config:    config,
		pol:       pol,
		endpoints: map[string]*policy.Endpoint{},
		groups:    map[groupKey]*group{},
	}
	var idKeys []string
	for _, ep := range pol.Endpoints() {
		s.endpoints[ep.Name] = ep
		idKeys = append(idKeys, ep.IdentityKeys()...)
	}
	slices.Sort(idKeys)
	s.pins = pinnedEntries(config, slices.Compact(idKeys))
	return s, nil
}

// Stats returns the counts so far.
func (s *Suggester) Stats() Stats {
	st := s.stats
	st.Groups = len(s.groups)
	return st
}
