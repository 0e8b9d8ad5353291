// Command imagebuild writes metaguard's container images as OCI archives
// without a container engine (package imagebuild does the work):
//
//	imagebuild metaguard -out bin/metaguard-image.tar -ref metaguard:dev \
//	    -binary bin/metaguard -wrapper deploy/image/iptables-wrapper
//	imagebuild static -out bin/pause-image.tar -ref registry.k8s.io/pause:3.10 \
//	    -binary bin/pause -path /pause
//
// metaguard is the runtime image the Dockerfile describes, on a Debian root
// made by debootstrap (root and the Debian mirror needed; cached under
// -cache, keyed by suite, packages and mirror, so later builds only add the
// binary). static is one static binary and nothing else. -ref may list
// several references, comma-separated: the archive then names the same
// image under each. `make image` runs the first form.
package main
