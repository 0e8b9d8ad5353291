package redirect

import (
	"context"
	"errors"
	"fmt"
)

// syncRouteRules brings every family's routing rules to want (see
// routerules.go) and returns a line per change. A family the kernel does
// not support is skipped with a warning, once: its endpoints, if any, are
// unreachable over it anyway.
func (r *Reconciler) syncRouteRules(ctx context.Context, want map[family][]routeRule) ([]string, error) {
	var changes []string
	for _, f := range families {
		c, err := syncFamilyRouteRules(ctx, r.sys.rules, f, want[f])
		changes = append(changes, c.lines...)
		if errors.Is(err, errFamilyUnsupported) {
			if key := f.String() + " unsupported"; !r.warnedRules[key] {
				r.warnedRules[key] = true
				r.log.Warn("no routing rules in this address family: the backstop for its endpoints is not installed", "family", f.String(), "err", err)
			}
			continue
		}
		if err != nil {
			return changes, fmt.Errorf("syncing %s routing rules: %w", f, err)
		}
		if key := f.String() + " foreign"; c.foreign > 0 && !r.warnedRules[key] {
			r.warnedRules[key] = true
			r.log.Warn("other routing rules share metaguard's priorities; they are left alone, but may be evaluated before metaguard's", "family", f.String(), "count", c.foreign, "priorities", fmt.Sprintf("%d-%d", rulePrioritySkipLocal, rulePriorityTarget))
		}
	}
	return changes, nil
}

type ruleChanges struct {
	lines   []string
	foreign int
}

// syncFamilyRouteRules makes one family hold exactly want of metaguard's
// rules: additions first, in want's order, then deletions, refusals
// first, so that locally generated traffic to an endpoint is never
// refused on the way.
func syncFamilyRouteRules(ctx context.Context, t ruleTable, f family, want []routeRule) (ruleChanges, error) {
	var c ruleChanges
	have, foreign, err := t.list(f)
	if err != nil {
		return c, err
	}
	c.foreign = foreign
	add, del := planRouteRules(have, want)
	for _, rr := range add {
		if err := ctx.Err(); err != nil {
			return c, err
		}
		if err := t.add(rr); err != nil {
			return c, err
		}
		c.lines = append(c.lines, fmt.Sprintf("%s rule: added %q", f, rr))
	}
	for _, rr := range del {
		if err := ctx.Err(); err != nil {
			return c, err
		}
		if err := t.del(rr); err != nil {
			return c, err
		}
		c.lines = append(c.lines, fmt.Sprintf("%s rule: deleted %q", f, rr))
	}
	return c, nil
}

// removeRouteRules deletes every one of metaguard's routing rules in both
// families, and nothing else.
func removeRouteRules(ctx context.Context, t ruleTable) ([]string, error) {
	var lines []string
	var errs []error
	for _, f := range families {
		c, err := syncFamilyRouteRules(ctx, t, f, nil)
		lines = append(lines, c.lines...)
		if err != nil && !errors.Is(err, errFamilyUnsupported) {
			errs = append(errs, fmt.Errorf("removing %s routing rules: %w", f, err))
		}
	}
	return lines, errors.Join(errs...)
}
