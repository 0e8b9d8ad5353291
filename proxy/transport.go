package proxy

import (
	"context"
	"net"
	"net/http"
	"time"
)

// Bounds of the upstream side. A metadata endpoint answers small,
// length-delimited responses from one address, so these are generous for
// the service and tight for a hostile one.
const (
	// maxResponseHeaderBytes bounds what an upstream's headers can make the
	// proxy hold (net/http's default is 1 MiB per response).
	maxResponseHeaderBytes = 16 << 10
	upstreamDialTimeout    = 2 * time.Second
	upstreamIdleTimeout    = 30 * time.Second
	// maxIdlePerEndpoint bounds the kept-alive upstream connections.
	maxIdlePerEndpoint = 64
)

// newUpstreamTransport is net/http's Transport set up for metadata
// endpoints: no proxy from the environment (the metadata address must never
// be reached through one), no compression (a stripped body must come back
// as plain text or JSON, and nothing is added to what the pod sent), HTTP/1.1
// only, bounded idle connections and response headers.
//
// Why two pods' exchanges never mix on a pooled connection: the Transport
// returns a connection to its pool only after a response whose framing it
// read to the end, and its read loop closes an idle connection the moment
// unsolicited bytes arrive on it (a response to a request nobody sent, such
// as one an upstream answered from a smuggled body); a request that carries
// a body is sent with Connection: close and its connection is never reused
// (forward sets Close), so an upstream that ignores bodies cannot plant an
// answer for the next request; and the proxy refuses bodies wherever the
// flavor's API defines none.
func newUpstreamTransport(dial func(ctx context.Context, network, addr string) (net.Conn, error), maxConns int) *http.Transport {
	if dial == nil {
		dial = (&net.Dialer{Timeout: upstreamDialTimeout, KeepAlive: 30 * time.Second}).DialContext
	}
	var http1 http.Protocols
	http1.SetHTTP1(true)
	return &http.Transport{
		Proxy:              nil,
		DialContext:        dial,
		DisableCompression: true,
		Protocols:          &http1,
		// Idle upstream connections (about 30 KiB each) are at most as
		// many as requests may be in flight, in all endpoints together:
		// with several endpoints they can sit beside that many active ones
		// (1.3 MiB at GOMEMLIMIT=32MiB), which the budget's headroom holds.
		MaxIdleConns:           maxConns,
		MaxIdleConnsPerHost:    min(maxIdlePerEndpoint, maxConns),
		MaxConnsPerHost:        maxConns,
		IdleConnTimeout:        upstreamIdleTimeout,
		MaxResponseHeaderBytes: maxResponseHeaderBytes,
		ExpectContinueTimeout:  0,
	}
}
