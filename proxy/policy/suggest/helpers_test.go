package suggest

import (
	"bytes"
	"context"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"metaguard.dev/metaguard/identity"
	"metaguard.dev/metaguard/proxy/audit"
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

// call is one request a pod made. status is the upstream's answer when the
// request is forwarded; zero means 200.
type call struct {
	pod       pod
	endpoint  string
	method    string
	path      string
	queryKeys []string
	status    int
	// oldProxy logs the call as a proxy did before audit mode stopped
	// forwarding credential reads: forwarded, audit-deny.
	oldProxy bool
}

// query gives each key a value; client_id is the identity azureConfig
// pins, so a billing pod asks for the identity its rule grants.
func query(keys []string) url.Values {
	q := url.Values{}
	for _, k := range keys {
		q.Set(k, "x")
	}
	if q.Has("client_id") {
		q.Set("client_id", "00000000-0000-0000-0000-000000000001")
	}
	return q
}

// logT0 is when synthetic logs start; each line is a second after the last.
var logT0 = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// logOf writes the audit log the proxy would write for calls under pol:
// each call is decided by the policy in force, as the proxy decides it, and
// written by the proxy's own audit writer.
func logOf(t testing.TB, pol *policy.Policy, calls []call) []byte {
	t.Helper()
	var recs []audit.Record
	for _, c := range calls {
		ep, ok := pol.EndpointByName(c.endpoint)
		if !ok {
			t.Fatalf("no endpoint %q", c.endpoint)
		}
		id := c.pod.identity()
		d := pol.Decide(id, policy.Request{Endpoint: ep, Method: c.method, Path: c.path, Query: query(c.queryKeys)})
		if c.oldProxy && d.Reason == audit.ReasonCredentialPath && pol.Mode == policy.ModeAudit {
			d.Audit, d.Reason = true, audit.ReasonNotAllowed
		}
		status := c.status
		switch {
		case !d.Forwarded():
			status = 403
		case status == 0:
			status = 200
		}
		recs = append(recs, audit.Record{
			Pod: id.Name, Namespace: id.Namespace, PodUID: id.UID, ServiceAccount: id.ServiceAccount, Labels: id.Labels,
			Endpoint: c.endpoint, Method: c.method, Path: c.path, QueryKeys: c.queryKeys,
			Decision: d.Label(), Rule: d.Rule, Reason: d.Reason, Status: status,
		})
	}
	return writeLog(t, recs...)
}

// writeLog writes records as the proxy's audit writer does.
func writeLog(t testing.TB, recs ...audit.Record) []byte {
	t.Helper()
	var b bytes.Buffer
	w, err := audit.NewWriter(&b, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range recs {
		if r.Time.IsZero() {
			r.Time = logT0.Add(time.Duration(i) * time.Second)
		}
		if !r.SrcIP.IsValid() {
			r.SrcIP = netip.MustParseAddr("10.0.0.7")
		}
		r.Bytes, r.Duration = 12, 400*time.Microsecond
		w.Write(context.Background(), &r)
	}
	return b.Bytes()
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

// byEach makes calls of every pod: a path used by two pods or more is one a
// pattern may stand for.
func byEach(pods []pod, f func(pod) []call) []call {
	var out []call
	for _, p := range pods {
		out = append(out, f(p)...)
	}
	return out
}

// wasServed is the tests' own statement of what suggest learns from: the
// upstream's 2xx, and GCP's 304 (a conditional or wait_for_change request
// with nothing new). Spelled out here, not taken from the code it checks.
func wasServed(ep *policy.Endpoint, status int) bool {
	return status >= 200 && status <= 299 || status == 304 && ep.Flavor == policy.FlavorGCP
}
