// Package fakecloud is the GCP- and Azure-flavoured instance metadata
// upstream of the e2e sandbox (AWS is served by amazon-ec2-metadata-mock).
//
// It owns two handlers per server: the metadata API, modelled on what GCE's
// and Azure's metadata servers do at the HTTP level (required headers,
// rejected X-Forwarded-For, directory listings, recursive JSON, alt=text,
// long-polls with ETags, token documents), and a control API for the test
// (recorded requests, changing a value to wake long-polls, quirks that make
// it a hostile or unusual upstream, injected faults). Every request
// the metadata handler receives is recorded with its method, raw path, raw
// query and headers, so a test can prove what metaguard forwarded and what
// it never let through.
//
// A GCP server also answers DNS for metadata.google.internal, as GCE's
// metadata server is the VPC's resolver. Each emulated behaviour names the
// documentation or client library source it follows, next to its code.
//
// The data is fake and fixed; it must not grow into a general emulator.
// Public surface: Flavor, New, Server (Handler, ControlHandler, ServeDNS,
// Records, Reset, SetValue, SetQuirks, Quirks, AddFault, ClearFaults),
// Record, Quirks, Fault, the Azure identity ids.
package fakecloud
