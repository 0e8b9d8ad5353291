//go:build tools

// Package tools pins github.com/containernetworking/plugins: bridge and
// host-local give the e2e node's pods their interfaces and addresses on the
// node's bridge, loopback their lo (containerd always runs it), portmap is
// chained as in a typical cluster's CNI configuration.
package tools

import (
	_ "github.com/containernetworking/plugins/plugins/ipam/host-local"
	_ "github.com/containernetworking/plugins/plugins/main/bridge"
	_ "github.com/containernetworking/plugins/plugins/main/loopback"
	_ "github.com/containernetworking/plugins/plugins/meta/portmap"
)
