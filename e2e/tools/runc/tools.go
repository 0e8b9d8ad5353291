//go:build tools

// Package tools pins github.com/opencontainers/runc, the OCI runtime
// containerd's shim runs. It needs cgo and is built with -tags seccomp
// against libseccomp-dev: the kubelet asks for the RuntimeDefault seccomp
// profile on every pod sandbox, and a runc without seccomp refuses it.
package tools

import _ "github.com/opencontainers/runc"
