package policy

import (
	"bytes"
	"fmt"
	"net/netip"

	"go.yaml.in/yaml/v3"
)

// wellKnownEndpoints are intercepted while no valid policy is loaded: the
// metadata addresses of the clouds whose IMDS pods must not reach unchecked
// on a fresh node. Each is an address that serves nothing but metadata (the
// Azure WireServer serves the VM agent, which pods have no business with);
// DNS and NTP on them pass as always.
var wellKnownEndpoints = []struct{ name, addr string }{
	{"metadata", "169.254.169.254:80"},
	{"aws-v6", "[fd00:ec2::254]:80"},
	{"gcp-v6", "[fd20:ce::254]:80"},
	{"azure-wireserver", "168.63.129.16:80"},
	{"azure-wireserver-hgap", "168.63.129.16:32526"},
}

// FailClosed is the policy in force while no valid policy has ever been
// loaded (a fresh node whose ConfigMap holds a broken policy, or none yet):
// it intercepts the well-known metadata endpoints and whatever endpoints
// the broken document still names validly, and allows nothing; Invalid
// returns err. Exiting instead would leave a fresh node with no rules at
// all, and every pod reading the IMDS directly.
func FailClosed(err error, doc []byte) *Policy {
	p := &Policy{Source: "(no valid policy)", Mode: ModeEnforce, DefaultAction: Deny,
		byAddr: map[netip.AddrPort]*Endpoint{}, invalid: err}
	add := func(e *Endpoint) {
		if _, dup := p.byAddr[e.Addr]; dup {
			return
		}
		p.byAddr[e.Addr] = e
		p.endpoints = append(p.endpoints, e)
	}
	for _, e := range salvageEndpoints(doc) {
		add(e)
	}
	for _, w := range wellKnownEndpoints {
		c := compiler{doc: &yaml.Node{}}
		if e := c.endpoint(fieldPath{"endpoints"}, &endpointSpec{Name: w.name, Address: w.addr, Flavor: string(FlavorGeneric)}, nil); e != nil {
			add(e)
		}
	}
	return p
}

// salvageEndpoints reads the endpoints a broken document names validly, so
// that what the operator meant to intercept is intercepted while the rest
// of the document is fixed. Anything it cannot read is skipped.
func salvageEndpoints(doc []byte) []*Endpoint {
	var partial struct {
		Endpoints []endpointSpec `yaml:"endpoints"`
	}
	if len(doc) > maxPolicyBytes || yaml.NewDecoder(bytes.NewReader(doc)).Decode(&partial) != nil {
		return nil
	}
	var out []*Endpoint
	for i := range partial.Endpoints {
		c := compiler{doc: &yaml.Node{}}
		if e := c.endpoint(fieldPath{"endpoints", i}, &partial.Endpoints[i], nil); e != nil && len(c.problems) == 0 {
			out = append(out, e)
		}
	}
	return out
}

// String names the placeholder in logs.
func (p *Policy) String() string {
	if p.invalid != nil {
		return fmt.Sprintf("fail-closed placeholder (%d endpoints): %v", len(p.endpoints), p.invalid)
	}
	return p.Source
}
