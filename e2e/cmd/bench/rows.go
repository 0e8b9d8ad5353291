package main

import (
	"net/netip"

	"metaguard.dev/metaguard/e2e/sandbox"
)

// The paths the rows request, and what metaguard's benchmark policy does
// with them.
const (
	pathAllowed = "/latest/meta-data/instance-id"               // allowed by the rule
	pathListing = "/latest/meta-data/"                          // allowed, iam/ stripped
	pathDenied  = "/latest/meta-data/iam/security-credentials/" // a credential path: 403
)

// loadPods is how many pods the saturating tables' connections come from.
// metaguard caps the requests one pod has in flight (an eighth of its
// budget: 6 under the DaemonSet's GOMEMLIMIT of 32 MiB), so sixteen
// connections from one pod would measure its 503s; four pods of four
// connections each are a node's pods asking at once.
const loadPods = 4

// upstream is a metadata service every row of a table reaches, directly or
// through a proxy on the node.
type upstream struct {
	title string
	addr  netip.AddrPort
	// nginxListen is the reverse proxy's listener for this upstream; the
	// nginx row DNATs the pods' traffic to it.
	nginxListen netip.AddrPort
}

var (
	fast = upstream{"fast stand-in (static nginx)", netip.MustParseAddrPort("169.254.169.249:80"), netip.AddrPortFrom(sandbox.HostIP, 8282)}
	mock = upstream{"amazon-ec2-metadata-mock", sandbox.AWSIMDS, netip.AddrPortFrom(sandbox.HostIP, 8283)}
)

// session is what runs on the node during a row. A round runs every
// session once, and each session's rows of every table back to back.
type session string

const (
	sessDirect    session = "direct"
	sessNginx     session = "nginx"
	sessMetaguard session = "metaguard"
	sessBaseline  session = "baseline"
	// sessVariant is the checkout's build with other Go runtime settings.
	sessVariant session = "variant"
	// sessTraced is the checkout's build with the trace hook, for the
	// tail's trace only.
	sessTraced session = "traced"
	// sessTracedVariant is that build with the variant's settings.
	sessTracedVariant session = "traced-variant"
)

// row is one configuration of a table.
type row struct {
	key     string
	label   string
	path    string
	status  int // every response's expected status
	session session
}

var (
	rowDirect = row{"direct", "direct to the upstream (no proxy)", pathAllowed, 200, sessDirect}
	rowNginx  = row{"nginx", "nginx reverse proxy", pathAllowed, 200, sessNginx}
	rowAllow  = row{"allowed", "metaguard, allowed path", pathAllowed, 200, sessMetaguard}
	rowStrip  = row{"strip", "metaguard, stripped listing `" + pathListing + "`", pathListing, 200, sessMetaguard}
	rowDeny   = row{"denied", "metaguard, denied credential path (403)", pathDenied, 403, sessMetaguard}
	rowBase   = row{"baseline", "metaguard at the baseline, allowed path", pathAllowed, 200, sessBaseline}
	rowVar    = row{"variant", "metaguard with the variant's runtime settings, allowed path", pathAllowed, 200, sessVariant}
)

// table is one table of the report.
type table struct {
	key, title string
	up         upstream
	keepAlive  bool
	// conns 1 measures latency, not throughput: one connection from one
	// pod, so no request queues behind another and the difference to the
	// direct row is what the proxy adds to a request.
	conns int
	rows  []row
}

func tables(conns int, baseline, variant bool) []table {
	var extra []row
	if baseline {
		extra = append(extra, rowBase)
	}
	if variant {
		extra = append(extra, rowVar)
	}
	return []table{
		{"fast", "Fast stand-in, keep-alive", fast, true, conns, append([]row{rowDirect, rowNginx, rowAllow, rowStrip, rowDeny}, extra...)},
		{"mock", "amazon-ec2-metadata-mock, keep-alive", mock, true, conns, []row{rowDirect, rowNginx, rowAllow, rowStrip}},
		{"close", "Fast stand-in, a new connection per request", fast, false, conns, []row{rowDirect, rowNginx, rowAllow}},
		{"one", "Fast stand-in, one request at a time", fast, true, 1, append([]row{rowDirect, rowNginx, rowAllow, rowDeny}, extra...)},
	}
}
