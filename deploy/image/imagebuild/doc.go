// Package imagebuild builds metaguard's OCI images without a container
// engine, from Debian's packages and binaries built here, with
// go-containerregistry writing the image.
//
// It owns what goes into the images: Metaguard (the runtime content the
// Dockerfile describes: a bookworm-slim-like Debian root with both iptables
// back ends and conntrack, the iptables wrapper under the plain iptables
// names, the static metaguard binary, the same PATH, entrypoint, command
// and labels) and Static (one static binary and nothing else: the e2e
// node's pause and workload images). Debian's root file system comes from
// debootstrap (Debootstrap), run in a private mount namespace so the
// machine's mounts never change, then trimmed as Debian's slim images are
// (Slim).
//
// Public surface: MetaguardSpec, Metaguard, Static, Debootstrap, Slim,
// RootfsLayer, FilesLayer, File, WriteOCIArchive, ReadOCIArchive.
//
// It must not run a container engine, reach a registry, or pull anything:
// the only network it uses is the Debian mirror debootstrap is given.
package imagebuild
