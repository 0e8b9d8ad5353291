package suggest

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// groupKey identifies the pods one suggested rule selects.
type groupKey struct {
	namespace string
	kind      GroupKind
	value     string // label value or service account; "" for ByNamespace
}

// Bounds on what one group can make suggest hold. A pod chooses its paths,
// and a generic upstream may answer 200 for any of them; past the bound,
// lines are counted, not kept, and the output says so.
const (
	// maxPaths is the distinct learned paths kept per group and endpoint.
	maxPaths = 4096
	// maxReviewPaths is the distinct credential paths kept for review per
	// group and endpoint: far more than any workload reads, far fewer than
	// a probe can invent.
	maxReviewPaths = 64
)

type group struct {
	key  groupKey
	pods podTable
	// endpoints holds what the group was served, by endpoint and path.
	endpoints map[string]map[string]*pathUse
	// review holds the group's credential requests that the policy in
	// force did not grant, by endpoint and path.
	review map[string]map[string]*reviewUse
	// over counts lines past the bounds, learned and for review.
	overPaths, overReview int64
}

func newGroup(k groupKey) *group {
	return &group{key: k, endpoints: map[string]map[string]*pathUse{}, review: map[string]map[string]*reviewUse{}}
}

// pathUse is what a group was served on one path of one endpoint.
type pathUse struct {
	methods methodSet
	// credential: the path is in the credential class, and the policy in
	// force granted it.
	credential bool
	// read, put and del are the pods that used the path with GET or
	// HEAD, with PUT and with DELETE: a pattern is only made from paths two
	// pods used.
	read, put, del podSet
	requests       int64
	// queryKeys of credential requests, for the hint to pin an identity.
	queryKeys map[string]bool
}

// reviewUse is a group's credential requests on one path that learning
// does not grant.
type reviewUse struct {
	methods     methodSet
	pods        podSet
	requests    int64
	first, last time.Time
	// outcomes counts how the requests were logged, e.g. "deny
	// credential-path".
	outcomes  map[string]int64
	queryKeys map[string]bool
}

func (u *reviewUse) add(pod int32, t time.Time, outcome string) {
	u.pods.add(pod)
	u.requests++
	if !t.IsZero() && (u.first.IsZero() || t.Before(u.first)) {
		u.first = t
	}
	if t.After(u.last) {
		u.last = t
	}
	if u.outcomes == nil {
		u.outcomes = map[string]int64{}
	}
	u.outcomes[outcome]++
}

type methodSet uint8

const (
	methodGet methodSet = 1 << iota
	methodHead
	methodPut
	methodDelete
	methodsRead = methodGet | methodHead
)

// methodBits are the methods the policy decides (policy.Endpoint.Serves
// says where): learning takes no other.
var methodBits = map[string]methodSet{"GET": methodGet, "HEAD": methodHead, "PUT": methodPut, "DELETE": methodDelete}

func methodList(m methodSet) []string {
	var names []string
	for _, name := range []string{"GET", "HEAD", "PUT", "DELETE"} {
		if m&methodBits[name] != 0 {
			names = append(names, name)
		}
	}
	return names
}

func methodNames(m methodSet) string { return strings.Join(methodList(m), ",") }

// podTable numbers a group's pods, so each path holds small numbers, not
// names.
type podTable struct {
	ids   map[string]int32
	names []string
}

func (t *podTable) id(name string) int32 {
	if id, ok := t.ids[name]; ok {
		return id
	}
	if t.ids == nil {
		t.ids = map[string]int32{}
	}
	id := int32(len(t.names))
	t.ids[name] = id
	t.names = append(t.names, name)
	return id
}

// maxNamed is how many pods a line of the output names; the rest are a
// count.
const maxNamed = 3

// describe names the pods of s: "pod a", "pods a, b", "pods a, b, c and 4
// more". The names are the least of s, so the output does not depend on
// the order of the lines.
func (t *podTable) describe(s podSet) string {
	names := make([]string, len(s))
	for i, id := range s {
		names[i] = t.names[id]
	}
	slices.Sort(names)
	switch {
	case len(names) == 0:
		return "no pod"
	case len(names) == 1:
		return "pod " + commentSafe(names[0])
	case len(names) <= maxNamed:
		return "pods " + commentSafe(strings.Join(names, ", "))
	}
	return fmt.Sprintf("pods %s and %d more", commentSafe(strings.Join(names[:maxNamed], ", ")), len(names)-maxNamed)
}

// podSet is a sorted set of pod numbers.
type podSet []int32

func (s *podSet) add(id int32) {
	i, found := slices.BinarySearch(*s, id)
	if !found {
		*s = slices.Insert(*s, i, id)
	}
}

func (s podSet) union(o podSet) podSet {
	out := slices.Clone(s)
	for _, id := range o {
		out.add(id)
	}
	return out
}

// shared reports whether two pods or more are in s.
func (s podSet) shared() bool { return len(s) >= 2 }

// commentSafe keeps text that goes into a YAML comment on one line of
// printable ASCII: names and paths are checked before they get here, but a
// comment is the one place the encoder does not quote.
func commentSafe(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if b[j] < ' ' || b[j] > '~' {
					b[j] = '?'
				}
			}
			return string(b)
		}
	}
	return s
}
