package suggest

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"

	"metaguard.dev/metaguard/proxy/policy"
)

// maxLine bounds one audit line. Real lines are a few hundred bytes; the
// bound only stops a corrupt file (no newlines) from growing the buffer
// without limit. Longer lines are skipped as malformed.
const maxLine = 1 << 20

// proxyReasons are decided by the proxy before or beside the policy. Such
// a line says nothing about what the pod's rule should allow: a malformed
// or header-smuggling request is refused whatever the policy says, and an
// unidentified pod has no rule to put it in.
var proxyReasons = map[string]bool{
	"unknown-endpoint":  true,
	"malformed-request": true,
	"forwarded-header":  true,
	"unknown-pod":       true,
	"ambiguous-ip":      true,
	"identity-error":    true,
	"rate-limited":      true,
	"client-gone":       true,
	"method-not-served": true,
}

// groupKey identifies the pods one suggested rule selects.
type groupKey struct {
	namespace string
	kind      GroupKind
	value     string // label value or service account; "" for ByNamespace
}

type group struct {
	key      groupKey
	requests int64
	// examplePod helps a reviewer recognise the group: the least pod
	// name, so the output does not depend on the order of the lines.
	examplePod string
	endpoints  map[string]map[string]*pathUse
}

// pathUse is what a group did with one path on one endpoint.
type pathUse struct {
	methods    methodSet
	credential bool
	// queryKeys of credential requests, for the hint to pin an identity.
	queryKeys map[string]bool
}

type methodSet uint8

const (
	methodGet methodSet = 1 << iota
	methodHead
	methodPut
)

var methodBits = map[string]methodSet{"GET": methodGet, "HEAD": methodHead, "PUT": methodPut}

// ReadLog reads one audit log, plain or gzip (detected by its magic bytes,
// so rotated logs need no renaming), adding what it shows to the
// suggestion. name identifies the log in Stats.FirstMalformed. Lines that
// are not usable audit records are counted, not fatal; only a read error
// or ctx ends it early.
func (s *Suggester) ReadLog(ctx context.Context, name string, r io.Reader) error {
	br := bufio.NewReaderSize(r, 64<<10)
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		gz, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("reading %s: %w", name, err)
		}
		defer gz.Close()
		br = bufio.NewReaderSize(gz, 64<<10)
	}
	var rec auditLine
	labelKey := ""
	if s.opts.GroupBy.Kind == ByLabel {
		labelKey = s.opts.GroupBy.Label
	}
	for lineNo := 1; ; lineNo++ {
		if lineNo%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("reading %s: %w", name, err)
			}
		}
		line, tooLong, err := s.readLine(br)
		if len(bytes.TrimSpace(line)) > 0 || tooLong {
			s.stats.Lines++
			if tooLong {
				s.malformed(name, lineNo, fmt.Sprintf("longer than %d bytes", maxLine))
			} else {
				if jerr := decodeLine(line, labelKey, &s.intern, &rec); jerr != nil {
					s.malformed(name, lineNo, "not a JSON object")
				} else if why := s.add(&rec); why != "" {
					s.malformed(name, lineNo, why)
				}
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading %s line %d: %w", name, lineNo, err)
		}
	}
}

// readLine returns the next line without its newline. A line longer than
// maxLine is consumed and reported as tooLong.
func (s *Suggester) readLine(br *bufio.Reader) (line []byte, tooLong bool, err error) {
	frag, err := br.ReadSlice('\n')
	if !errors.Is(err, bufio.ErrBufferFull) {
		// The common case: the line fits the reader's buffer, no copy.
		return bytes.TrimSuffix(frag, []byte("\n")), false, err
	}
	s.buf = append(s.buf[:0], frag...)
	for errors.Is(err, bufio.ErrBufferFull) {
		frag, err = br.ReadSlice('\n')
		if !tooLong {
			s.buf = append(s.buf, frag...)
			if len(s.buf) > maxLine {
				tooLong, s.buf = true, s.buf[:0]
			}
		}
	}
	if tooLong {
		return nil, true, err
	}
	return bytes.TrimSuffix(s.buf, []byte("\n")), false, err
}

func (s *Suggester) malformed(name string, line int, why string) {
	s.stats.Malformed++
	if s.stats.FirstMalformed == "" {
		s.stats.FirstMalformed = fmt.Sprintf("%s:%d: %s", name, line, why)
	}
}

// add records one audit line, or says why it is malformed.
func (s *Suggester) add(rec *auditLine) string {
	switch rec.decision {
	case "allow", "strip", "audit-deny":
	case "deny":
		s.stats.Denied++
		return ""
	case "":
		// kubectl logs interleaves the daemon's own JSON log (stderr)
		// with the audit log (stdout); those lines are expected here.
		s.stats.Other++
		return ""
	default:
		return fmt.Sprintf("unknown decision %q", rec.decision)
	}
	if proxyReasons[rec.reason] || rec.namespace == "" {
		// Forwarded only because audit mode forwards what it cannot
		// attribute; there is no pod to write a rule for.
		s.stats.Unidentified++
		return ""
	}
	ep, ok := s.endpoints[rec.endpoint]
	if !ok {
		s.stats.UnknownEndpoint++
		return ""
	}
	bit, ok := methodBits[rec.method]
	if !ok || !ep.MethodAllowed(rec.method) {
		return fmt.Sprintf("method %q is never forwarded to endpoint %s", rec.method, ep.Name)
	}
	if why := policy.CanonicalPath(rec.path); why != "" {
		return fmt.Sprintf("path %q: %s", rec.path, why)
	}
	key := s.groupOf(rec)
	g := s.groups[key]
	if g == nil {
		// Checked once per group, not per line: the names end up in
		// selectors, and the checks are regular expressions.
		if why := validGroup(key); why != "" {
			return why
		}
		g = &group{key: key, examplePod: rec.pod, endpoints: map[string]map[string]*pathUse{}}
		s.groups[key] = g
	}
	s.stats.Used++
	g.requests++
	if rec.pod < g.examplePod {
		g.examplePod = rec.pod
	}
	paths := g.endpoints[ep.Name]
	if paths == nil {
		paths = map[string]*pathUse{}
		g.endpoints[ep.Name] = paths
	}
	u := paths[rec.path]
	if u == nil {
		u = &pathUse{credential: ep.IsCredential(rec.path)}
		paths[rec.path] = u
	}
	u.methods |= bit
	if u.credential {
		for _, k := range rec.queryKeys {
			if u.queryKeys == nil {
				u.queryKeys = map[string]bool{}
			}
			u.queryKeys[k] = true
		}
	}
	return ""
}

func (s *Suggester) groupOf(rec *auditLine) groupKey {
	key := groupKey{namespace: rec.namespace, kind: s.opts.GroupBy.Kind}
	switch {
	case key.kind == ByNamespace:
	case key.kind == ByLabel && rec.hasLabel:
		key.value = rec.label
	default:
		key.kind, key.value = ByServiceAccount, rec.serviceAccount
	}
	return key
}

// validGroup says why a group cannot be written as selectors, or "".
func validGroup(k groupKey) string {
	if errs := validation.IsValidLabelValue(k.namespace); len(errs) > 0 {
		return fmt.Sprintf("namespace %q is not a namespace name", k.namespace)
	}
	switch {
	case k.kind == ByServiceAccount && k.value == "":
		return "no service_account to group the pod by"
	case k.kind == ByLabel:
		if errs := validation.IsValidLabelValue(k.value); len(errs) > 0 {
			return fmt.Sprintf("label value %q: %s", k.value, strings.Join(errs, "; "))
		}
	}
	return ""
}
