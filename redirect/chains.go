package redirect

import (
	"context"
	"fmt"
	"slices"
)

// The functions here turn one chain of the kernel into its desired content
// with as few commands as possible and without a moment in which pod traffic
// to an endpoint is neither redirected nor dropped. Each returns a
// human-readable line per command it issued, for the log; none issues a
// command when the chain is already right.

// listRules lists a chain's rules as specs; missing is true when the chain
// does not exist.
func listRules(run runner, table, chain string) (rules [][]string, missing bool, err error) {
	lines, err := run.List(table, chain)
	if isMissing(err) {
		return nil, true, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("listing %s %s: %w", table, chain, err)
	}
	for _, line := range lines {
		if c, spec, ok := parseRule(line); ok && c == chain {
			rules = append(rules, spec)
		}
	}
	return rules, false, nil
}

// ensureChain makes one of our chains hold exactly want, in order.
func ensureChain(ctx context.Context, run runner, table, chain string, want [][]string) ([]string, error) {
	cur, missing, err := listRules(run, table, chain)
	if err != nil {
		return nil, err
	}
	var changes []string
	if missing {
		if err := run.NewChain(table, chain); err != nil {
			return nil, fmt.Errorf("creating %s %s: %w", table, chain, err)
		}
		changes = append(changes, fmt.Sprintf("%s %s: created chain", table, chain))
	}

	// One pass lays want out, in order, as a subsequence of the chain:
	// rules already in place are kept, missing ones inserted where they
	// belong, and a rule no longer wanted further on is stepped over. Only
	// then are the stepped-over rules deleted, so a rule being replaced
	// (a renamed endpoint, a reordered chain) has its successor in place
	// first and no packet finds the chain half-empty.
	remaining := map[string]int{}
	for _, w := range want {
		remaining[ruleKey(w)]++
	}
	keep := make([]bool, len(cur))
	pos := 0
	for _, w := range want {
		for pos < len(cur) && remaining[ruleKey(cur[pos])] == 0 {
			pos++ // not wanted from here on: deleted below
		}
		remaining[ruleKey(w)]--
		if pos < len(cur) && sameRule(cur[pos], w) {
			keep[pos] = true
			pos++
			continue
		}
		if err := ctx.Err(); err != nil {
			return changes, err
		}
		if err := run.Insert(table, chain, pos+1, w...); err != nil {
			return changes, fmt.Errorf("inserting rule %d into %s %s: %w", pos+1, table, chain, err)
		}
		cur = slices.Insert(cur, pos, w)
		keep = slices.Insert(keep, pos, true)
		changes = append(changes, fmt.Sprintf("%s %s: inserted rule %d", table, chain, pos+1))
		pos++
	}
	// Deleting by position is safe only because the chain is ours; rules in
	// built-in chains are only ever deleted by spec. Highest first, so the
	// positions still to delete do not move.
	for i := len(cur) - 1; i >= 0; i-- {
		if keep[i] {
			continue
		}
		if err := run.DeleteById(table, chain, i+1); err != nil {
			return changes, fmt.Errorf("deleting rule %d of %s %s: %w", i+1, table, chain, err)
		}
		changes = append(changes, fmt.Sprintf("%s %s: deleted rule %d", table, chain, i+1))
	}
	return changes, nil
}

// ensureJump makes the built-in chain jump to ours exactly once, at position
// 1, so that rules kube-proxy, Docker or the CNI put there cannot shadow it.
//
// Built-in chains are shared, so rules there are deleted by spec, never by
// position: another agent may insert between our list and our delete. As -D
// removes the first textual match, duplicates are replaced through a
// transient jump, which keeps at least one jump in place at every moment.
func ensureJump(ctx context.Context, run runner, h hook) ([]string, error) {
	rules, _, err := listRules(run, h.table, h.builtin)
	if err != nil {
		return nil, err
	}
	var jumps []int
	for i, r := range rules {
		if jumpsTo(r, h.chain) {
			jumps = append(jumps, i)
		}
	}
	want := jumpRule(h)
	where := fmt.Sprintf("%s %s", h.table, h.builtin)
	switch {
	case len(jumps) == 1 && jumps[0] == 0 && sameRule(rules[0], want):
		return nil, nil
	case len(jumps) == 0:
		if err := run.Insert(h.table, h.builtin, 1, want...); err != nil {
			return nil, fmt.Errorf("inserting jump to %s into %s: %w", h.chain, where, err)
		}
		return []string{fmt.Sprintf("%s: inserted jump to %s at position 1", where, h.chain)}, nil
	}

	tmp := transientJumpRule(h)
	if err := run.Insert(h.table, h.builtin, 1, tmp...); err != nil {
		return nil, fmt.Errorf("inserting transient jump to %s into %s: %w", h.chain, where, err)
	}
	changes := []string{fmt.Sprintf("%s: jump to %s was at positions %v, replacing it", where, h.chain, plusOne(jumps))}
	for _, i := range jumps {
		if err := ctx.Err(); err != nil {
			return changes, err
		}
		if err := run.Delete(h.table, h.builtin, rules[i]...); err != nil && !isMissing(err) {
			return changes, fmt.Errorf("deleting stale jump to %s from %s: %w", h.chain, where, err)
		}
	}
	if err := run.Insert(h.table, h.builtin, 1, want...); err != nil {
		return changes, fmt.Errorf("inserting jump to %s into %s: %w", h.chain, where, err)
	}
	if err := run.Delete(h.table, h.builtin, tmp...); err != nil && !isMissing(err) {
		return changes, fmt.Errorf("deleting transient jump to %s from %s: %w", h.chain, where, err)
	}
	return changes, nil
}

func plusOne(idx []int) []int {
	out := make([]int, len(idx))
	for i, v := range idx {
		out[i] = v + 1
	}
	return out
}

// removeOwned deletes the jumps and chains of the given hooks and nothing
// else; it is a no-op when they are already gone.
func removeOwned(ctx context.Context, run runner, hs []hook) ([]string, error) {
	var changes []string
	// In reverse install order: redirect stops before the drop goes, so a
	// pod is never sent to the endpoint while the proxy rules are half
	// removed.
	for _, h := range slices.Backward(hs) {
		rules, _, err := listRules(run, h.table, h.builtin)
		if err != nil {
			return changes, err
		}
		for _, r := range rules {
			if !jumpsTo(r, h.chain) {
				continue
			}
			if err := ctx.Err(); err != nil {
				return changes, err
			}
			if err := run.Delete(h.table, h.builtin, r...); err != nil && !isMissing(err) {
				return changes, fmt.Errorf("deleting jump to %s from %s %s: %w", h.chain, h.table, h.builtin, err)
			}
			changes = append(changes, fmt.Sprintf("%s %s: deleted jump to %s", h.table, h.builtin, h.chain))
		}
		_, missing, err := listRules(run, h.table, h.chain)
		if err != nil {
			return changes, err
		}
		if missing {
			continue
		}
		if err := run.ClearAndDeleteChain(h.table, h.chain); err != nil {
			return changes, fmt.Errorf("deleting %s %s: %w", h.table, h.chain, err)
		}
		changes = append(changes, fmt.Sprintf("%s %s: deleted chain", h.table, h.chain))
	}
	return changes, nil
}
