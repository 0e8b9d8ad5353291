package suggest

import (
	"bytes"
	"context"
	"encoding/json"
	"net/url"
	"strings"
	"testing"

	"metaguard.dev/metaguard/identity"
	"metaguard.dev/metaguard/proxy/policy"
)

// pod is a workload in a synthetic audit log.
type pod struct {
	name, namespace, sa string
	labels              map[string]string
}

func (p pod) identity() identity.Identity {
	return identity.Identity{
		Namespace: p.namespace, Name: p.name, UID: "uid-" + p.name, ServiceAccount: p.sa,
		Labels:          p.labels,
		NamespaceLabels: map[string]string{namespaceNameLabel: p.namespace},
	}
}

// call is one request a pod made.
type call struct {
	pod       pod
	endpoint  string
	method    string
	path      string
	queryKeys []string
}

// record is an audit line with the fields proxy/audit.go writes.
type record struct {
	Time           string            `json:"time"`
	SrcIP          string            `json:"src_ip"`
	Pod            string            `json:"pod"`
	Namespace      string            `json:"namespace"`
	PodUID         string            `json:"pod_uid"`
	ServiceAccount string            `json:"service_account"`
	Labels         map[string]string `json:"labels"`
	Endpoint       string            `json:"endpoint"`
	Method         string            `json:"method"`
	Path           string            `json:"path"`
	QueryKeys      []string          `json:"query_keys"`
	Decision       string            `json:"decision"`
	Rule           string            `json:"rule"`
	Reason         string            `json:"reason"`
	Status         int               `json:"status"`
	Bytes          int64             `json:"bytes"`
	DurationMS     float64           `json:"duration_ms"`
}

func query(keys []string) url.Values {
	q := url.Values{}
	for _, k := range keys {
		q.Set(k, "x")
	}
	return q
}

// logOf writes the audit log the proxy would write for calls under pol:
// each call is decided by the policy in force, as the proxy decides it.
func logOf(t *testing.T, pol *policy.Policy, calls []call) []byte {
	t.Helper()
	var b bytes.Buffer
	for _, c := range calls {
		ep, ok := pol.EndpointByName(c.endpoint)
		if !ok {
			t.Fatalf("no endpoint %q", c.endpoint)
		}
		id := c.pod.identity()
		d := pol.Decide(id, policy.Request{Endpoint: ep, Method: c.method, Path: c.path, Query: query(c.queryKeys)})
		status := 200
		if !d.Forwarded() {
			status = 403
		}
		writeRecord(t, &b, record{
			Pod: id.Name, Namespace: id.Namespace, PodUID: id.UID, ServiceAccount: id.ServiceAccount, Labels: id.Labels,
			Endpoint: c.endpoint, Method: c.method, Path: c.path, QueryKeys: c.queryKeys,
			Decision: d.Label().String(), Rule: d.Rule, Reason: d.Reason.String(), Status: status,
		})
	}
	return b.Bytes()
}

func writeRecord(t *testing.T, b *bytes.Buffer, r record) {
	t.Helper()
	r.Time, r.SrcIP, r.Bytes, r.DurationMS = "2025-01-01T00:00:00Z", "10.0.0.7", 12, 0.4
	if r.Labels == nil {
		r.Labels = map[string]string{}
	}
	if r.QueryKeys == nil {
		r.QueryKeys = []string{}
	}
	line, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	b.Write(line)
	b.WriteByte('\n')
}

func mustParse(t *testing.T, src string) *policy.Policy {
	t.Helper()
	p, err := policy.Parse("test", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// suggestFrom runs a whole suggestion over logs and parses the result.
func suggestFrom(t *testing.T, config string, opts Options, logs ...[]byte) (*Suggester, Suggestion, *policy.Policy) {
	t.Helper()
	s, err := New("config.yaml", []byte(config), opts)
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range logs {
		if err := s.ReadLog(context.Background(), "log"+string(rune('0'+i)), bytes.NewReader(l)); err != nil {
			t.Fatal(err)
		}
	}
	sug, err := s.Policy()
	if err != nil {
		t.Fatal(err)
	}
	p, err := policy.Parse("suggested", sug.YAML)
	if err != nil {
		t.Fatalf("suggested policy does not parse: %v\n%s", err, sug.YAML)
	}
	return s, sug, p
}

func labelBy(key string) Options {
	return Options{GroupBy: GroupBy{Kind: ByLabel, Label: key}, CollapseThreshold: DefaultCollapseThreshold}
}

// numbered expands "/a/{x,y}" style families for compact scenarios.
func expand(prefix string, names ...string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = strings.TrimSuffix(prefix, "/") + "/" + n
	}
	return out
}

func gets(p pod, endpoint string, paths ...string) []call {
	out := make([]call, len(paths))
	for i, path := range paths {
		out[i] = call{pod: p, endpoint: endpoint, method: "GET", path: path}
	}
	return out
}
