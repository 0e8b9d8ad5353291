//go:build tools

// Package tools pins k8s.io/kubernetes, whose commands make the e2e
// sandbox's control plane and node: kube-apiserver, kube-controller-manager,
// kube-scheduler, the kubelet, and kubectl (to apply the shipped manifests
// as a user would). One module for all of them, so that they are always the
// same version, as a release is; e2e/tools/tools.mk builds each into bin/
// with the version stamped in.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
