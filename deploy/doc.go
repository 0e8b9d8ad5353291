// Package deploy holds metaguard's Kubernetes manifests and the files its
// container image is built from; it has no Go API.
//
// The Helm chart in charts/metaguard is the one source of truth: base/
// (Namespace, ServiceAccount, RBAC, the policy ConfigMap and the
// DaemonSet), the overlays' policies and extra objects, and the components
// (node-taint, monitoring) are rendered from it by `make manifests`, and a
// test fails when a committed file differs from a fresh render. By hand
// are only the kustomization files, cleanup/ (removing the rules from every
// node on uninstall) and image/ (the iptables wrapper the Dockerfile
// installs). render/ renders the chart with the Helm SDK for the tests.
//
// The tests decode every manifest strictly into its Kubernetes API type
// and check the promises an operator relies on: the capabilities, the RBAC
// verbs, the placement, the probes, the live-reloadable policy mount, the
// shared xtables lock. Nothing here may grant anything docs/operations.md
// does not explain.
package deploy
