package policy

import (
	"sort"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ruleIndex narrows the rules that can select a pod before any selector is
// evaluated, so a decision costs a few map lookups per pod label rather
// than one selector evaluation per rule: with hundreds of rules, one per
// workload, almost none can select a given pod.
//
// Every rule is filed under one anchor that any pod it selects must have:
// a pod label key=value, a namespace label key=value, or a service
// account. A rule with none (an empty podSelector, say) is always a
// candidate. Candidates are then checked in full and in file order, so the
// index changes cost, never outcomes.
type ruleIndex struct {
	pod    map[labelKV][]int32
	ns     map[labelKV][]int32
	sa     map[serviceAccountRef][]int32
	always []int32
}

type labelKV struct{ k, v string }

func buildIndex(specs []*ruleSpec, rules []*rule) ruleIndex {
	x := ruleIndex{pod: map[labelKV][]int32{}, ns: map[labelKV][]int32{}, sa: map[serviceAccountRef][]int32{}}
	for i, s := range specs {
		idx := int32(i)
		switch {
		case fileUnder(x.pod, s.PodSelector, idx):
		case fileUnder(x.ns, s.NamespaceSelector, idx):
		case len(rules[i].serviceAccounts) > 0:
			for _, sa := range uniqRefs(rules[i].serviceAccounts) {
				x.sa[sa] = append(x.sa[sa], idx)
			}
		default:
			x.always = append(x.always, idx)
		}
	}
	return x
}

// fileUnder files rule idx under a key=value every selected object must
// carry: a matchLabels entry, or an In expression's values.
func fileUnder(m map[labelKV][]int32, s *selectorSpec, idx int32) bool {
	if s == nil {
		return false
	}
	if len(s.MatchLabels) > 0 {
		keys := make([]string, 0, len(s.MatchLabels))
		for k := range s.MatchLabels {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		kv := labelKV{keys[0], s.MatchLabels[keys[0]]}
		m[kv] = append(m[kv], idx)
		return true
	}
	for _, e := range s.MatchExpressions {
		if e.Operator == string(metav1.LabelSelectorOpIn) && len(e.Values) > 0 {
			for _, v := range uniq(e.Values) {
				kv := labelKV{e.Key, v}
				m[kv] = append(m[kv], idx)
			}
			return true
		}
	}
	return false
}

func uniqRefs(refs []serviceAccountRef) []serviceAccountRef {
	seen := map[serviceAccountRef]bool{}
	var out []serviceAccountRef
	for _, r := range refs {
		if !seen[r] {
			seen[r] = true
			out = append(out, r)
		}
	}
	return out
}

func uniq(vals []string) []string {
	seen := map[string]bool{}
	out := vals[:0:0]
	for _, v := range vals {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

// candidates appends, in file order, the rules that may select a pod with
// these labels, namespace labels and service account. buf is reused so the
// common case does not allocate.
func (x *ruleIndex) candidates(buf []int32, podLabels, nsLabels map[string]string, namespace, sa string) []int32 {
	out := append(buf[:0], x.always...)
	for k, v := range podLabels {
		out = append(out, x.pod[labelKV{k, v}]...)
	}
	for k, v := range nsLabels {
		out = append(out, x.ns[labelKV{k, v}]...)
	}
	out = append(out, x.sa[serviceAccountRef{namespace, sa}]...)
	// Each rule sits under one anchor, and a pod has one value per key,
	// so there are no duplicates; only the order needs restoring. The
	// lists are short: insertion sort, no allocation.
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j] < out[j-1]; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}
