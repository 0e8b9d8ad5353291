// Command bench measures what metaguard costs and writes BENCHMARKS.md:
// `make bench` (root; wrk and nginx from Debian, perf for the profile).
//
// It owns three phases, each on its own e2e sandbox or none:
//
//   - load: wrk inside a pod's network namespace against a fast static
//     upstream (nginx on 169.254.169.249, added to the cloud namespace) and
//     amazon-ec2-metadata-mock, directly, through nginx as a reverse proxy
//     and through metaguard (allowed, strip, denied, audited), rounds of
//     every row back to back, medians reported; proxy CPU and memory from
//     /proc; a perf profile of metaguard on the allowed path;
//   - identity scale: a cluster of up to 150,000 pods, metaguard's time to
//     ready, memory and bytes received from the API server with 250 pods on
//     its node, against an unscoped informer's bytes;
//   - Go benchmarks of decision, identity lookup, canonicalisation and
//     stripping (go test -bench), this package's black-box ones included.
//
// It must not touch the machine's root network namespace (everything runs
// in the sandbox's namespaces; nginx with its own prefix, pid and logs in
// the sandbox's directory), and must not edit metaguard's code or
// configuration beyond the flags a user would pass. Every number it prints
// comes from the run that prints it.
package main
