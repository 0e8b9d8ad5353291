// Command fakecloud serves a GCP- or Azure-flavoured instance metadata API
// for the e2e sandbox and records every request it receives (see package
// metaguard.dev/metaguard/e2e/fakecloud).
//
//	fakecloud -flavor gcp -listen 169.254.169.252:80 -control 127.0.0.1:9001 \
//	    [-dns 169.254.169.254:53] [-quirks honour-range,honour-if-none-match,dns-silent]
//
// The control listener (records, value changes) must not be reachable from
// pods; the sandbox binds it to the cloud namespace's loopback.
package main
