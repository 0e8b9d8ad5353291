package suggest

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// reviewHeader opens the block of credential requests learning does not
// grant, at the end of the suggested policy.
var reviewHeader = []string{
	"Needs review: credential requests that were not learned.",
	"The policy in force did not grant them: it refused them (audit mode never",
	"forwards a credential read), or an older proxy forwarded them only because of",
	"audit mode. A pod chooses what it requests, so a probe never becomes a grant",
	"by learning alone. They stay denied. To grant a group the paths listed for it,",
	"run suggest again with --grant-credentials=GROUP (repeatable).",
}

// reviewed returns the groups with credential requests to review, in the
// output's order.
func (s *Suggester) reviewed() []*group {
	var out []*group
	for _, g := range s.sortedGroups() {
		if len(g.review) > 0 {
			out = append(out, g)
		}
	}
	return out
}

// checkGrants refuses a group name the operator gave that has nothing to
// grant: a typo must not leave them believing a workload will get its
// credentials.
func (s *Suggester) checkGrants(names map[*group]string) (map[string]bool, error) {
	grant := map[string]bool{}
	for _, n := range s.opts.GrantCredentials {
		grant[n] = true
	}
	have := map[string]bool{}
	var list []string
	for _, g := range s.reviewed() {
		have[names[g]] = true
		list = append(list, names[g])
	}
	for _, n := range s.opts.GrantCredentials {
		if !have[n] {
			if len(list) == 0 {
				return nil, fmt.Errorf("grant credentials: no group has credential requests to review, so there is nothing to grant %s", n)
			}
			return nil, fmt.Errorf("grant credentials: group %q has no credential requests to review; groups that do: %s", n, strings.Join(list, ", "))
		}
	}
	return grant, nil
}

// reviewBlock writes the review comment for the groups not granted, and
// says what each group's review holds.
func (s *Suggester) reviewBlock(names map[*group]string, grant map[string]bool) (string, []Review) {
	var lines []string
	var reviews []Review
	for _, g := range s.reviewed() {
		name := names[g]
		rv := Review{Group: name, Who: s.who(g.key), Granted: grant[name]}
		var pods podSet
		var first, last time.Time
		eps := make([]string, 0, len(g.review))
		for ep, paths := range g.review {
			eps = append(eps, ep)
			for _, u := range paths {
				rv.Requests += u.requests
				rv.Paths++
				pods = pods.union(u.pods)
				if !u.first.IsZero() && (first.IsZero() || u.first.Before(first)) {
					first = u.first
				}
				if u.last.After(last) {
					last = u.last
				}
			}
		}
		rv.Pods = g.pods.describe(pods)
		reviews = append(reviews, rv)
		if rv.Granted {
			continue
		}
		sort.Strings(eps)
		lines = append(lines, "",
			fmt.Sprintf("group %s: %s", name, rv.Who),
			fmt.Sprintf("  %s on %s by %s%s", plural(rv.Requests, "credential request"), plural(int64(rv.Paths), "path"), rv.Pods, span(first, last)))
		for _, ep := range eps {
			paths := g.review[ep]
			indent := "  "
			if len(s.endpoints) > 1 {
				lines = append(lines, "  on endpoint "+ep+":")
				indent = "    "
			}
			sorted := make([]string, 0, len(paths))
			for p := range paths {
				sorted = append(sorted, p)
			}
			sort.Strings(sorted)
			for _, p := range sorted {
				u := paths[p]
				line := fmt.Sprintf("%s%s %s by %s: %s", indent, methodNames(u.methods), p, g.pods.describe(u.pods), u.summary())
				if len(u.queryKeys) > 0 {
					line += " (query keys: " + strings.Join(sortedKeys(u.queryKeys), ", ") + ")"
				}
				lines = append(lines, line)
			}
		}
		if g.overReview > 0 {
			lines = append(lines, fmt.Sprintf("  and %s on more paths than the %d kept per endpoint: never granted", plural(g.overReview, "request"), maxReviewPaths))
		}
	}
	if len(lines) == 0 {
		return "", reviews
	}
	var b strings.Builder
	b.WriteString("\n")
	for _, l := range append(append([]string{}, reviewHeader...), lines...) {
		if l == "" {
			b.WriteString("#\n")
			continue
		}
		b.WriteString("# " + commentSafe(l) + "\n")
	}
	return b.String(), reviews
}

// summary says how the requests on one path were logged, and when.
func (u *reviewUse) summary() string {
	outcomes := make([]string, 0, len(u.outcomes))
	for o := range u.outcomes {
		outcomes = append(outcomes, o)
	}
	sort.Strings(outcomes)
	if len(outcomes) > 1 {
		for i, o := range outcomes {
			outcomes[i] = fmt.Sprintf("%d %s", u.outcomes[o], o)
		}
	}
	return fmt.Sprintf("%s (%s)%s", plural(u.requests, "request"), strings.Join(outcomes, ", "), span(u.first, u.last))
}

func span(first, last time.Time) string {
	if first.IsZero() {
		return ""
	}
	a, b := first.UTC().Format(time.RFC3339), last.UTC().Format(time.RFC3339)
	if a == b {
		return ", at " + a
	}
	return fmt.Sprintf(", %s to %s", a, b)
}
