package main

import (
	"net/netip"
	"slices"
	"time"

	"metaguard.dev/metaguard/e2e/sandbox"
)

// The paths the rows request, and what metaguard's benchmark policy does
// with them.
const (
	pathAllowed = "/latest/meta-data/instance-id"               // allowed by the rule
	pathListing = "/latest/meta-data/"                          // allowed, iam/ stripped
	pathDenied  = "/latest/meta-data/iam/security-credentials/" // a credential path: 403
)

// Where the upstreams are. The fast stand-in gets an address of its own
// in the cloud namespace; the mock is the sandbox's.
var (
	fastAddr = netip.MustParseAddrPort("169.254.169.249:80")
	mockAddr = sandbox.AWSIMDS
)

// target is an upstream every row of a table reaches, directly or through
// a proxy on the node.
type target struct {
	key   string
	title string
	addr  netip.AddrPort
	// nginxListen is the reverse proxy's listener for this upstream; row
	// 2 DNATs the pod's traffic to it.
	nginxListen netip.AddrPort
}

var (
	targetFast = target{key: "fast", title: "fast stand-in (static nginx)", addr: fastAddr, nginxListen: netip.AddrPortFrom(sandbox.HostIP, 8282)}
	targetMock = target{key: "mock", title: "amazon-ec2-metadata-mock", addr: mockAddr, nginxListen: netip.AddrPortFrom(sandbox.HostIP, 8283)}
)

// rowKind is one configuration of the list, numbered as there.
type rowKind int

const (
	rowDirect rowKind = iota + 1
	rowNginx
	rowAllow
	rowStrip
	rowDeny
	rowAudit
	rowAllowPool
)

// session is what must be running for a row; rows of one session run
// back to back, sessions in this order every round.
type session int

const (
	sessNone session = iota
	sessNginx
	sessMetaguard
	sessMetaguardAudit
	sessMetaguardPool
)

var sessions = []session{sessNone, sessNginx, sessMetaguard, sessMetaguardAudit, sessMetaguardPool}

// rowInfo says what a row is, for the run and for the reader.
type rowInfo struct {
	label   string
	path    string
	session session
	status  int // every response's expected status
}

var rowInfos = map[rowKind]rowInfo{
	rowDirect: {"direct to the upstream (no proxy)", pathAllowed, sessNone, 200},
	rowNginx:  {"nginx reverse proxy", pathAllowed, sessNginx, 200},
	rowAllow:  {"metaguard, allowed path", pathAllowed, sessMetaguard, 200},
	rowStrip:  {"metaguard, strip path (listing rewritten)", pathListing, sessMetaguard, 200},
	rowDeny:   {"metaguard, denied path (403)", pathDenied, sessMetaguard, 403},
	rowAudit:  {"metaguard, audit log to a file, /metrics scraped", pathAllowed, sessMetaguardAudit, 200},
	// The same binary with --upstream-transport=pool: the hand-written
	// pool against net/http's Transport (row 3), side by side.
	rowAllowPool: {"metaguard, allowed path, hand-written upstream pool", pathAllowed, sessMetaguardPool, 200},
}

// tableSpec is one table of the report.
type tableSpec struct {
	key       string
	title     string
	target    target
	keepAlive bool
	rows      []rowKind
	// oneAtATime tables measure latency, not throughput: one wrk thread
	// and connection, so no request ever queues behind another and the
	// difference to the direct row is what the proxy adds to a request.
	oneAtATime bool
}

func loadTables() []tableSpec {
	all := []rowKind{rowDirect, rowNginx, rowAllow, rowStrip, rowDeny, rowAudit}
	return []tableSpec{
		{key: "fast", title: "Fast stand-in, keep-alive", target: targetFast, keepAlive: true, rows: append(all, rowAllowPool)},
		{key: "mock", title: "amazon-ec2-metadata-mock, keep-alive", target: targetMock, keepAlive: true, rows: all},
		{key: "fast-close", title: "Fast stand-in, a new connection per request", target: targetFast, keepAlive: false,
			rows: []rowKind{rowDirect, rowNginx, rowAllow}},
		{key: "fast-latency", title: "Fast stand-in, one request at a time", target: targetFast, keepAlive: true, oneAtATime: true,
			rows: []rowKind{rowDirect, rowNginx, rowAllow, rowAllowPool, rowDeny}},
	}
}

// sample is one wrk run of one row and what the proxy used meanwhile.
type sample struct {
	wrk        wrkResult
	cpu        cpuTime // proxy processes, over the run; 0 without proxy
	mem        memory  // proxy processes, at the end of the run
	unexpected int64   // responses with another status, socket errors
}

// rowResult is a row's samples over the rounds.
type rowResult struct {
	kind    rowKind
	samples []sample
}

// loadResult is the load phase's outcome.
type loadResult struct {
	tables    []tableSpec
	results   map[string][]*rowResult // by table key, in row order
	startLoad string
	endLoad   string
	took      time.Duration
	opts      loadOptions
	profile   *profileResult
}

func (l *loadResult) row(table string, kind rowKind) *rowResult {
	rs := l.results[table]
	if i := slices.IndexFunc(rs, func(r *rowResult) bool { return r.kind == kind }); i >= 0 {
		return rs[i]
	}
	return nil
}
