// Command bench measures what metaguard costs and writes BENCHMARKS.md:
// `make bench` (root; wrk, nginx and perf from Debian).
//
// On one e2e sandbox it runs wrk inside pods' network namespaces against a
// fast static upstream and amazon-ec2-metadata-mock: directly, through
// nginx as a reverse proxy and through metaguard, every configuration in
// every round, rounds interleaved, medians reported; the proxies' CPU,
// kernel run-queue wait and memory come from /proc. It then profiles
// metaguard with perf, traces it with runtime/trace to explain its tail,
// and runs the Go benchmarks. The identity-at-scale measurement is an e2e
// test (TestIdentityAtScale, behind -scale).
//
// It must not touch the machine's root network namespace (everything runs
// in the sandbox's namespaces) and builds metaguard from the checkout as a
// user would; the traced build only adds a file that starts and stops the
// runtime's tracer on a signal. Every number it prints comes from the run
// that prints it, but for the record of the upstream transport decision
// (report.go's writeTransport), measured once against a pool since deleted.
package main
