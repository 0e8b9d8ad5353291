package audit

import (
	"strconv"
	"strings"
)

// decoder reads lines shaped as the Writer writes them (slog's JSON: one
// flat object, printable ASCII, no escapes) without encoding/json, and
// shares what repeats from line to line: names, paths, a pod's label set,
// a request's query keys. Logs run to millions of lines, and encoding/json
// spends most of its time on reflection and on allocating those again;
// BenchmarkDecode measures the difference. Anything the direct path is
// unsure of (escapes, non-ASCII, null, a duplicate or differently-cased
// key, a summary line) goes to encoding/json, whose reading is the
// reference: FuzzDecode holds the two to the same result.
//
// The caches are bounded: what they hold is a convenience, not the data,
// so a log of ever-new pods or paths costs allocations, not memory.
type decoder struct {
	strs   map[string]string
	labels map[string]map[string]string // by the raw JSON of the object
	keys   map[string][]string          // by the raw JSON of the array
	held   int                          // bytes the caches hold, roughly
}

const (
	maxCached      = 1 << 14
	maxCachedBytes = 4 << 20
)

// decode reads line into r.
func (d *decoder) decode(line []byte, r *Record) error {
	var j jsonRecord
	if !d.fast(line, &j) {
		rec, err := Decode(line)
		*r = rec
		return err
	}
	rec, err := record(&j)
	*r = rec
	return err
}

// fast reports whether it could read line, and then filled j exactly as
// encoding/json would have; false means "ask encoding/json", never
// "malformed".
func (d *decoder) fast(line []byte, j *jsonRecord) bool {
	s := scanner{b: line}
	s.ws()
	if !s.eat('{') {
		return false
	}
	var seen fieldSet
	s.ws()
	if s.eat('}') {
		return s.end()
	}
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
		f, known := fieldIndex(key)
		if known {
			// encoding/json merges a repeated labels object and lets a
			// later null undo an earlier value; rare enough to leave to it.
			if seen.has(f) {
				return false
			}
			seen.add(f)
			if !d.member(&s, f, j) {
				return false
			}
		} else if foldsToField(key) || !s.skip(0) {
			return false
		}
		s.ws()
		if s.eat(',') {
			continue
		}
		if !s.eat('}') {
			return false
		}
		return s.end()
	}
}

// field numbers the members of jsonRecord the direct path fills.
type field uint8

const (
	fTime field = iota
	fSrcIP
	fPod
	fNamespace
	fPodUID
	fServiceAccount
	fLabels
	fEndpoint
	fMethod
	fPath
	fQueryKeys
	fDecision
	fRule
	fReason
	fStatus
	fBytes
	fDuration
	nFields
)

type fieldSet uint32

func (s fieldSet) has(f field) bool { return s&(1<<f) != 0 }
func (s *fieldSet) add(f field)     { *s |= 1 << f }

// fieldNames are the JSON names in field order: Fields, which the Writer
// writes.
var fieldNames = func() [nFields]string {
	var out [nFields]string
	if len(Fields) != int(nFields) {
		panic("audit: the direct decoder does not know every field")
	}
	copy(out[:], Fields)
	return out
}()

func fieldIndex(key []byte) (field, bool) {
	for i, n := range fieldNames {
		if n == string(key) {
			return field(i), true
		}
	}
	return 0, false
}

// foldsToField reports whether key is not a field name but encoding/json,
// which matches names case-insensitively, would take it for one (or for a
// summary line's fields, which the direct path never reads).
func foldsToField(key []byte) bool {
	k := string(key)
	for _, n := range fieldNames {
		if strings.EqualFold(n, k) {
			return true
		}
	}
	return strings.EqualFold(k, "suppressed") || strings.EqualFold(k, "suppressed_by_reason")
}

// member reads the value of one known field into j.
func (d *decoder) member(s *scanner, f field, j *jsonRecord) bool {
	switch f {
	case fTime:
		start := s.i
		if _, ok := s.str(); !ok {
			return false
		}
		// The very method encoding/json calls, on the same bytes.
		return j.Time.UnmarshalJSON(s.b[start:s.i]) == nil
	case fLabels:
		return d.labelSet(s, j)
	case fQueryKeys:
		return d.queryKeys(s, j)
	case fStatus:
		n, ok := s.integer()
		if !ok || int64(int(n)) != n {
			return false
		}
		j.Status = int(n)
		return true
	case fBytes:
		n, ok := s.integer()
		j.Bytes = n
		return ok
	case fDuration:
		start := s.i
		if !s.number() {
			return false
		}
		v, err := strconv.ParseFloat(string(s.b[start:s.i]), 64)
		j.DurationMS = v
		return err == nil
	}
	v, ok := s.str()
	if !ok {
		return false
	}
	switch f {
	case fPod:
		// Pods come and go: caching their names or UIDs would only
		// crowd out what does repeat.
		j.Pod = string(v)
	case fPodUID:
		j.PodUID = string(v)
	case fSrcIP:
		j.SrcIP = d.str(v)
	case fNamespace:
		j.Namespace = d.str(v)
	case fServiceAccount:
		j.ServiceAccount = d.str(v)
	case fEndpoint:
		j.Endpoint = d.str(v)
	case fMethod:
		j.Method = d.str(v)
	case fPath:
		j.Path = d.str(v)
	case fDecision:
		j.Decision = d.str(v)
	case fRule:
		j.Rule = d.str(v)
	case fReason:
		j.Reason = d.str(v)
	default:
		return false
	}
	return true
}

func (d *decoder) str(b []byte) string {
	if v, ok := d.strs[string(b)]; ok {
		return v
	}
	v := string(b)
	if d.room(len(v)) {
		if d.strs == nil {
			d.strs = map[string]string{}
		}
		d.strs[v] = v
	}
	return v
}

func (d *decoder) room(n int) bool {
	if len(d.strs)+len(d.labels)+len(d.keys) >= maxCached || d.held+n > maxCachedBytes {
		return false
	}
	d.held += n
	return true
}

// labelSet reads the labels object. A pod writes the same set on every
// line, so the map is shared between the records that carry the same
// bytes; Record.Labels is read-only by contract.
func (d *decoder) labelSet(s *scanner, j *jsonRecord) bool {
	start := s.i
	if !s.eat('{') {
		return false
	}
	n := 0
	s.ws()
	if !s.eat('}') {
		for {
			s.ws()
			if _, ok := s.str(); !ok {
				return false
			}
			s.ws()
			if !s.eat(':') {
				return false
			}
			s.ws()
			if _, ok := s.str(); !ok {
				return false
			}
			n++
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
	raw := s.b[start:s.i]
	if m, ok := d.labels[string(raw)]; ok {
		j.Labels = m
		return true
	}
	// The bytes were checked above; read them again into a map. Later
	// keys win, as in encoding/json.
	m := make(map[string]string, n)
	r := scanner{b: raw}
	r.eat('{')
	for i := 0; i < n; i++ {
		r.ws()
		r.eat(',')
		r.ws()
		k, _ := r.str()
		r.ws()
		r.eat(':')
		r.ws()
		v, _ := r.str()
		m[d.str(k)] = d.str(v)
	}
	if d.room(len(raw)) {
		if d.labels == nil {
			d.labels = map[string]map[string]string{}
		}
		d.labels[string(raw)] = m
	}
	j.Labels = m
	return true
}

// queryKeys reads the query_keys array, shared like labelSet's maps. The
// slice is full (len == cap), so an append by a reader copies it.
func (d *decoder) queryKeys(s *scanner, j *jsonRecord) bool {
	start := s.i
	if !s.eat('[') {
		return false
	}
	n := 0
	s.ws()
	if !s.eat(']') {
		for {
			s.ws()
			if _, ok := s.str(); !ok {
				return false
			}
			n++
			s.ws()
			if s.eat(',') {
				continue
			}
			if !s.eat(']') {
				return false
			}
			break
		}
	}
	raw := s.b[start:s.i]
	if k, ok := d.keys[string(raw)]; ok {
		j.QueryKeys = k
		return true
	}
	// encoding/json reads [] as empty, not nil.
	keys := make([]string, 0, n)
	r := scanner{b: raw}
	r.eat('[')
	for i := 0; i < n; i++ {
		r.ws()
		r.eat(',')
		r.ws()
		v, _ := r.str()
		keys = append(keys, d.str(v))
	}
	if d.room(len(raw)) {
		if d.keys == nil {
			d.keys = map[string][]string{}
		}
		d.keys[string(raw)] = keys
	}
	j.QueryKeys = keys
	return true
}
