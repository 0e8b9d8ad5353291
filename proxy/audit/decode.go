package audit

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// jsonRecord is a line as encoding/json reads it; unknown fields are
// ignored, so lines of newer versions still read. The fast decoder fills
// the same struct, and both go through record, so the two readings can
// differ only in how the struct is filled, which FuzzDecode checks.
type jsonRecord struct {
	Time               time.Time         `json:"time"`
	SrcIP              string            `json:"src_ip"`
	Pod                string            `json:"pod"`
	Namespace          string            `json:"namespace"`
	PodUID             string            `json:"pod_uid"`
	ServiceAccount     string            `json:"service_account"`
	Labels             map[string]string `json:"labels"`
	Endpoint           string            `json:"endpoint"`
	Method             string            `json:"method"`
	Path               string            `json:"path"`
	QueryKeys          []string          `json:"query_keys"`
	Decision           string            `json:"decision"`
	Rule               string            `json:"rule"`
	Reason             string            `json:"reason"`
	Status             int               `json:"status"`
	Bytes              int64             `json:"bytes"`
	DurationMS         float64           `json:"duration_ms"`
	Suppressed         *int              `json:"suppressed"`
	SuppressedByReason map[string]int    `json:"suppressed_by_reason"`
}

// Decode reads one audit line with encoding/json: the reference reading,
// which Reader's faster one is held to. A line that is JSON but carries no
// decision (the daemon's operational log, which kubectl logs interleaves)
// is an error wrapping ErrNotRecord; a decision this version does not know
// is an ordinary error.
func Decode(line []byte) (Record, error) {
	var j jsonRecord
	if err := json.Unmarshal(line, &j); err != nil {
		return Record{}, fmt.Errorf("audit line: %w", err)
	}
	return record(&j)
}

// record turns a line's fields into a Record, checking what the JSON types
// alone do not.
func record(j *jsonRecord) (Record, error) {
	if j.Decision == "" {
		return Record{}, fmt.Errorf("%w: no decision", ErrNotRecord)
	}
	d, ok := ParseDecision(j.Decision)
	if !ok {
		return Record{}, fmt.Errorf("audit line: unknown decision %q", j.Decision)
	}
	r := Record{
		Time: j.Time, Pod: j.Pod, Namespace: j.Namespace, PodUID: j.PodUID,
		ServiceAccount: j.ServiceAccount, Labels: j.Labels, Endpoint: j.Endpoint,
		Method: j.Method, Path: j.Path, QueryKeys: j.QueryKeys, Decision: d,
		Rule: j.Rule, Reason: ParseReason(j.Reason), Status: j.Status, Bytes: j.Bytes,
		Duration: time.Duration(j.DurationMS * float64(time.Millisecond)),
	}
	if j.SrcIP != "" {
		a, err := netip.ParseAddr(j.SrcIP)
		if err != nil {
			return Record{}, fmt.Errorf("audit line: src_ip %q: %w", j.SrcIP, err)
		}
		r.SrcIP = a
	}
	if j.Suppressed != nil {
		r.Suppressed = make(map[Reason]int, len(j.SuppressedByReason))
		for code, n := range j.SuppressedByReason {
			r.Suppressed[ParseReason(code)] = n
		}
	}
	return r, nil
}

// ErrNotRecord marks JSON lines that are not audit records.
var ErrNotRecord = errors.New("not an audit record")
