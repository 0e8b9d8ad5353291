package suggest

import "encoding/json"

// auditLine holds the fields of an audit record that a rule is made of.
type auditLine struct {
	pod, namespace, serviceAccount string
	endpoint, method, path         string
	decision, reason               string
	queryKeys                      []string
	// label is the value of the group-by label, if the pod has it.
	label    string
	hasLabel bool
}

// jsonLine is an audit record as encoding/json reads it. Unknown fields
// are ignored, so newer proxies' lines still read.
type jsonLine struct {
	Pod            string            `json:"pod"`
	Namespace      string            `json:"namespace"`
	ServiceAccount string            `json:"service_account"`
	Labels         map[string]string `json:"labels"`
	Endpoint       string            `json:"endpoint"`
	Method         string            `json:"method"`
	Path           string            `json:"path"`
	QueryKeys      []string          `json:"query_keys"`
	Decision       string            `json:"decision"`
	Reason         string            `json:"reason"`
}

// decodeLine reads one audit line into rec. Logs run to millions of lines,
// and encoding/json spends most of its time on reflection and on fields
// nobody needs here, so lines shaped as the proxy writes them (slog's JSON:
// flat, ASCII, no escapes) take a direct path; anything else, and anything
// the direct path is unsure of, goes to encoding/json, whose reading is
// the reference (FuzzDecodeLine holds the two to the same result).
func decodeLine(line []byte, labelKey string, in *interner, rec *auditLine) error {
	keys := rec.queryKeys[:0]
	*rec = auditLine{queryKeys: keys}
	if fastDecode(line, labelKey, in, rec) {
		return nil
	}
	return decodeJSON(line, labelKey, rec)
}

// decodeJSON is decodeLine by encoding/json alone: the reference reading.
func decodeJSON(line []byte, labelKey string, rec *auditLine) error {
	var j jsonLine
	if err := json.Unmarshal(line, &j); err != nil {
		return err
	}
	*rec = auditLine{
		pod: j.Pod, namespace: j.Namespace, serviceAccount: j.ServiceAccount,
		endpoint: j.Endpoint, method: j.Method, path: j.Path,
		decision: j.Decision, reason: j.Reason, queryKeys: j.QueryKeys,
	}
	if labelKey != "" {
		rec.label, rec.hasLabel = j.Labels[labelKey]
	}
	return nil
}

// lineFields are the JSON names fastDecode fills, lower case.
// encoding/json matches object keys to fields case-insensitively; a key
// that differs from these only in case is left to it.
var lineFields = map[string]bool{
	"pod": true, "namespace": true, "service_account": true, "endpoint": true, "method": true,
	"path": true, "decision": true, "reason": true, "labels": true, "query_keys": true,
}

// interner shares the strings that repeat from line to line (names,
// paths, decisions), so a long log does not allocate them anew each time.
// It stops growing at a bound: what it holds is a cache, not the data.
type interner struct{ m map[string]string }

const maxInterned = 1 << 14

func (in *interner) get(b []byte) string {
	if v, ok := in.m[string(b)]; ok {
		return v
	}
	v := string(b)
	if in.m == nil {
		in.m = map[string]string{}
	}
	if len(in.m) < maxInterned {
		in.m[v] = v
	}
	return v
}

// fastDecode reports whether it could read line, and then read it exactly
// as encoding/json would have; false means "ask encoding/json", never
// "malformed".
func fastDecode(line []byte, labelKey string, in *interner, rec *auditLine) bool {
	s := scanner{b: line, in: in}
	s.ws()
	if !s.eat('{') {
		return false
	}
	s.ws()
	if !s.eat('}') {
		for {
			s.ws()
			key, ok := s.str()
			if !ok {
				return false
			}
			s.ws()
			if !s.eat(':') {
				return false
			}
			s.ws()
			if !s.member(key, labelKey, rec) {
				return false
			}
			s.ws()
			if s.eat(',') {
				continue
			}
			if !s.eat('}') {
				return false
			}
			break
		}
	}
	s.ws()
	return s.i == len(s.b)
}

// member reads the value of one top-level key.
func (s *scanner) member(key []byte, labelKey string, rec *auditLine) bool {
	var dst *string
	switch string(key) {
	case "pod":
		dst = &rec.pod
	case "namespace":
		dst = &rec.namespace
	case "service_account":
		dst = &rec.serviceAccount
	case "endpoint":
		dst = &rec.endpoint
	case "method":
		dst = &rec.method
	case "path":
		dst = &rec.path
	case "decision":
		dst = &rec.decision
	case "reason":
		dst = &rec.reason
	case "labels":
		return s.labels(labelKey, rec)
	case "query_keys":
		return s.queryKeys(rec)
	default:
		if len(key) <= len("service_account") {
			// str only returns ASCII, so ASCII lower case is the fold.
			var low [len("service_account")]byte
			for i, c := range key {
				if 'A' <= c && c <= 'Z' {
					c += 'a' - 'A'
				}
				low[i] = c
			}
			if lineFields[string(low[:len(key)])] {
				return false
			}
		}
		return s.skip(0)
	}
	if s.lit("null") {
		// encoding/json leaves a string field alone on null.
		return true
	}
	v, ok := s.str()
	if ok {
		if dst == &rec.pod {
			// Pods come and go: caching their names would make memory
			// grow with the log.
			*dst = string(v)
		} else {
			*dst = s.in.get(v)
		}
	}
	return ok
}

func (s *scanner) labels(labelKey string, rec *auditLine) bool {
	if s.lit("null") {
		rec.label, rec.hasLabel = "", false
		return true
	}
	if !s.eat('{') {
		return false
	}
	s.ws()
	if s.eat('}') {
		return true
	}
	for {
		s.ws()
		k, ok := s.str()
		if !ok {
			return false
		}
		s.ws()
		if !s.eat(':') {
			return false
		}
		s.ws()
		v, ok := s.str()
		if !ok {
			return false
		}
		if labelKey != "" && string(k) == labelKey {
			rec.label, rec.hasLabel = s.in.get(v), true
		}
		s.ws()
		if s.eat(',') {
			continue
		}
		return s.eat('}')
	}
}

func (s *scanner) queryKeys(rec *auditLine) bool {
	rec.queryKeys = rec.queryKeys[:0]
	if s.lit("null") {
		rec.queryKeys = nil
		return true
	}
	if !s.eat('[') {
		return false
	}
	s.ws()
	if s.eat(']') {
		return true
	}
	for {
		s.ws()
		v, ok := s.str()
		if !ok {
			return false
		}
		rec.queryKeys = append(rec.queryKeys, s.in.get(v))
		s.ws()
		if s.eat(',') {
			continue
		}
		return s.eat(']')
	}
}
