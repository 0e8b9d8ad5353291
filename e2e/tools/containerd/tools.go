//go:build tools

// Package tools pins github.com/containerd/containerd/v2, the container
// runtime of the e2e node: containerd (its CRI plugin is what the kubelet
// talks to), containerd-shim-runc-v2 and ctr (to import the locally built
// images; nothing is ever pulled).
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
