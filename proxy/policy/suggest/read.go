package suggest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"

	"metaguard.dev/metaguard/proxy/audit"
	"metaguard.dev/metaguard/proxy/policy"
)

// ReadLog reads one audit log, plain or gzip, adding what it shows to the
// suggestion. name identifies the log in Stats.FirstMalformed. Lines that
// are not usable audit records are counted, not fatal; only a read error
// or ctx ends it early.
func (s *Suggester) ReadLog(ctx context.Context, name string, r io.Reader) error {
	rd, err := audit.NewReader(r)
	if err != nil {
		return fmt.Errorf("reading %s: %w", name, err)
	}
	var rec audit.Record
	for n := 1; ; n++ {
		if n%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("reading %s: %w", name, err)
			}
		}
		err := rd.Next(&rec)
		var le *audit.LineError
		switch {
		case errors.Is(err, io.EOF):
			return nil
		case errors.Is(err, audit.ErrNotRecord):
			// kubectl logs interleaves the daemon's own JSON log (stderr)
			// with the audit log (stdout); those lines are expected here.
			s.stats.Lines++
			s.stats.Other++
		case errors.As(err, &le):
			s.stats.Lines++
			s.malformed(name, le.Line, le.Err.Error())
		case err != nil:
			return fmt.Errorf("reading %s: %w", name, err)
		default:
			s.stats.Lines++
			if why := s.add(&rec); why != "" {
				s.malformed(name, rd.Line(), why)
			}
		}
	}
}

func (s *Suggester) malformed(name string, line int, why string) {
	s.stats.Malformed++
	if s.stats.FirstMalformed == "" {
		s.stats.FirstMalformed = fmt.Sprintf("%s:%d: %s", name, line, why)
	}
}

// add records one audit record, or says why it is malformed. What a rule
// may be made of is decided here, line by line, and each step closes a way
// for the pod being judged to write its own policy:
//
//   - Only the policy's decisions count (audit.Reason.DecidedByPolicy): a
//     line the proxy decided on its own (a malformed request, an unknown
//     pod, a rate limit, a code this version does not know) says nothing
//     about what a rule should allow.
//   - A credential-class request becomes a grant only when the policy in
//     force granted it (credentials-allowed, by a rule that still says
//     credentials: allow) and it was served. Any other credential request
//     (refused in audit mode, forwarded only because of audit mode) is
//     kept for review, never learned.
//   - Anything else is learned only if it was forwarded and served: a 404
//     for a path a pod invented, a 403 or a 5xx of the upstream, is not a
//     use.
func (s *Suggester) add(rec *audit.Record) string {
	if !rec.Reason.DecidedByPolicy() {
		s.stats.ByProxy++
		return ""
	}
	if rec.Namespace == "" || rec.Pod == "" {
		return fmt.Sprintf("reason %s is a policy decision, but the line names no pod", rec.Reason)
	}
	ep, ok := s.endpoints[rec.Endpoint]
	if !ok {
		s.stats.UnknownEndpoint++
		return ""
	}
	bit, ok := methodBits[rec.Method]
	if !ok || !ep.Serves(rec.Method, rec.Path) {
		return fmt.Sprintf("method %s on %q is never decided by the policy on endpoint %s", rec.Method, rec.Path, ep.Name)
	}
	if why := policy.CanonicalPath(rec.Path); why != "" {
		return fmt.Sprintf("path %q: %s", rec.Path, why)
	}
	credential := ep.IsCredential(rec.Path)
	granted := credential && rec.Decision == audit.DecisionAllow &&
		rec.Reason == audit.ReasonCredentialsAllowed && s.pol.GrantsCredentials(rec.Rule)
	if !credential && !rec.Decision.Forwarded() {
		s.stats.Denied++
		return ""
	}
	if !credential || granted {
		if !served(ep, rec.Status) {
			s.stats.NotServed++
			return ""
		}
	}

	key := s.groupOf(rec)
	g := s.groups[key]
	if g == nil {
		// Checked once per group, not per line: the names end up in
		// selectors, and the checks are regular expressions.
		if why := validGroup(key); why != "" {
			return why
		}
		g = newGroup(key)
		s.groups[key] = g
	}
	pod := g.pods.id(rec.Pod)
	if credential && !granted {
		s.review(g, ep, rec, bit, pod)
		return ""
	}
	paths := g.endpoints[ep.Name]
	if paths == nil {
		paths = map[string]*pathUse{}
		g.endpoints[ep.Name] = paths
	}
	u := paths[rec.Path]
	if u == nil {
		if len(paths) >= maxPaths {
			s.stats.OverBound++
			g.overPaths++
			return ""
		}
		u = &pathUse{credential: credential}
		paths[rec.Path] = u
	}
	s.stats.Used++
	u.methods |= bit
	u.requests++
	switch bit {
	case methodPut:
		u.put.add(pod)
	case methodDelete:
		u.del.add(pod)
	default:
		u.read.add(pod)
	}
	if credential {
		addKeys(&u.queryKeys, rec.QueryKeys)
	}
	return ""
}

func (s *Suggester) review(g *group, ep *policy.Endpoint, rec *audit.Record, bit methodSet, pod int32) {
	paths := g.review[ep.Name]
	if paths == nil {
		paths = map[string]*reviewUse{}
		g.review[ep.Name] = paths
	}
	u := paths[rec.Path]
	if u == nil {
		if len(paths) >= maxReviewPaths {
			s.stats.OverBound++
			g.overReview++
			return
		}
		u = &reviewUse{}
		paths[rec.Path] = u
	}
	s.stats.Review++ // a line past the bound is counted once, as OverBound
	u.methods |= bit
	u.add(pod, rec.Time, rec.Decision.String()+" "+rec.Reason.String())
	addKeys(&u.queryKeys, rec.QueryKeys)
}

func addKeys(dst *map[string]bool, keys []string) {
	for _, k := range keys {
		if *dst == nil {
			*dst = map[string]bool{}
		}
		(*dst)[k] = true
	}
}

// served reports whether the upstream answered with what the path holds:
// a 2xx, or for GCP a 304, which its clients' conditional and
// wait_for_change requests get when nothing changed.
func served(ep *policy.Endpoint, status int) bool {
	if status >= 200 && status < 300 {
		return true
	}
	return status == http.StatusNotModified && ep.Flavor == policy.FlavorGCP
}

func (s *Suggester) groupOf(rec *audit.Record) groupKey {
	key := groupKey{namespace: rec.Namespace, kind: s.opts.GroupBy.Kind}
	switch {
	case key.kind == ByNamespace:
	case key.kind == ByLabel:
		if v, ok := rec.Labels[s.opts.GroupBy.Label]; ok {
			key.value = v
			break
		}
		fallthrough
	default:
		key.kind, key.value = ByServiceAccount, rec.ServiceAccount
	}
	return key
}

// validGroup says why a group cannot be written as selectors, or "".
func validGroup(k groupKey) string {
	if errs := validation.IsDNS1123Label(k.namespace); len(errs) > 0 {
		return fmt.Sprintf("namespace %q is not a namespace name", k.namespace)
	}
	switch k.kind {
	case ByServiceAccount:
		if k.value == "" {
			return "no service_account to group the pod by"
		}
		if errs := validation.IsDNS1123Subdomain(k.value); len(errs) > 0 {
			return fmt.Sprintf("service account %q: %s", k.value, strings.Join(errs, "; "))
		}
	case ByLabel:
		if errs := validation.IsValidLabelValue(k.value); len(errs) > 0 {
			return fmt.Sprintf("label value %q: %s", k.value, strings.Join(errs, "; "))
		}
	}
	return ""
}
