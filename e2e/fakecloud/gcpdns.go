package fakecloud

import (
	"errors"
	"net"
	"strings"

	"golang.org/x/net/dns/dnsmessage"
)

// gcpMetadataName is the name GCE's resolver answers with the metadata
// address. On GCE, 169.254.169.254 is also the VPC's DNS resolver
// (https://cloud.google.com/compute/docs/internal-dns), and
// cloud.google.com/go/compute/metadata's OnGCE races a lookup of this name
// (dnsRequestStrategy) against its HTTP probe: the first answer wins.
const gcpMetadataName = "metadata.google.internal."

var gcpMetadataIP = [4]byte{169, 254, 169, 254}

// ServeDNS answers DNS queries on pc until it is closed: A for
// metadata.google.internal is 169.254.169.254, AAAA for it is empty, any
// other name is NXDOMAIN (the fake resolves nothing outside the sandbox).
// With the DNSSilent quirk it reads queries and answers none.
func (s *Server) ServeDNS(pc net.PacketConn) error {
	buf := make([]byte, 1500)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if errors.Is(err, net.ErrClosed) {
			return nil
		}
		if err != nil {
			return err
		}
		if s.Quirks().DNSSilent {
			continue
		}
		if resp, ok := dnsAnswer(buf[:n]); ok {
			_, _ = pc.WriteTo(resp, addr)
		}
	}
}

// dnsAnswer builds the response to one query; ok is false for a packet
// that is not a query with one question, which is dropped.
func dnsAnswer(query []byte) ([]byte, bool) {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil || h.Response {
		return nil, false
	}
	qs, err := p.AllQuestions()
	if err != nil || len(qs) != 1 {
		return nil, false
	}
	q := qs[0]
	known := strings.EqualFold(q.Name.String(), gcpMetadataName)
	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired, RecursionAvailable: true}
	if !known {
		rh.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, rh)
	b.EnableCompression()
	if b.StartQuestions() != nil || b.Question(q) != nil || b.StartAnswers() != nil {
		return nil, false
	}
	if known && q.Type == dnsmessage.TypeA && q.Class == dnsmessage.ClassINET {
		hdr := dnsmessage.ResourceHeader{Name: q.Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 60}
		if b.AResource(hdr, dnsmessage.AResource{A: gcpMetadataIP}) != nil {
			return nil, false
		}
	}
	resp, err := b.Finish()
	return resp, err == nil
}
