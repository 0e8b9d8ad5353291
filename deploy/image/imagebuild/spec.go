package imagebuild

// MetaguardSpec is the metaguard image's runtime content. The Dockerfile
// describes the same image for users who have a container engine;
// deploy/image_test.go checks that the two agree line by line (base
// suite, packages, files, links, PATH, entrypoint, command, labels).
var MetaguardSpec = struct {
	// Suite is the Debian release of the base (debian:bookworm-slim).
	Suite string
	// BaseName is the base image the Dockerfile names, recorded in the
	// org.opencontainers.image.base.name label.
	BaseName string
	// Packages are installed on top of the minimal base: iptables brings
	// both back ends (iptables-nft and iptables-legacy), conntrack
	// flushes connections opened before the redirect existed.
	Packages []string
	// Wrapper is where the iptables wrapper goes; Links are the names
	// that point at it, in the same directory, which comes before
	// /usr/sbin in PATH.
	Wrapper string
	Links   []string
	// Binary is where the static metaguard binary goes.
	Binary     string
	Env        []string
	Entrypoint []string
	Cmd        []string
	// Labels are the OCI annotations every build sets; version,
	// revision, created and source are added per build.
	Labels map[string]string
}{
	Suite:      "bookworm",
	BaseName:   "docker.io/library/debian:bookworm-slim",
	Packages:   []string{"iptables", "conntrack"},
	Wrapper:    "/usr/local/sbin/iptables-wrapper",
	Links:      []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"},
	Binary:     "/usr/local/bin/metaguard",
	Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
	Entrypoint: []string{"/usr/local/bin/metaguard"},
	Cmd:        []string{"run"},
	Labels: map[string]string{
		"org.opencontainers.image.title":       "metaguard",
		"org.opencontainers.image.description": "Per-node gate between Kubernetes pods and the cloud instance metadata service",
	},
}
