// Package deploy holds metaguard's Kubernetes manifests and the files its
// container image is built from; it has no Go API.
//
// It owns base/ (Namespace, ServiceAccount, RBAC, the policy ConfigMap and
// the DaemonSet), overlays/ (one per cloud, plus node-taint),
// components/node-taint, cleanup/ (removing the rules from every node on
// uninstall) and image/ (the iptables wrapper the Dockerfile installs). Its
// tests decode every manifest strictly into its Kubernetes API type and
// check the promises an operator relies on: the capabilities, the RBAC
// verbs, the probes, the live-reloadable policy mount, the shared xtables
// lock. It must not grant anything docs/operations.md does not explain.
package deploy
