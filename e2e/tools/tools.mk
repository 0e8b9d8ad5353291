# Pinned end-to-end tools, each built from its own Go module under
# e2e/tools/<module> into bin/<name>. Included by the top-level Makefile.
#
# The recipes always run, but e2e/tools/build.sh compares a hash of the tool
# module (go.mod, go.sum, Go files) with bin/.<name>.stamp and rebuilds only
# when the pinned version changed or the binary is missing. Timestamps play
# no part, so a bin/ restored from a cache or a copy is reused as is.
#
#   e2e-tools       what `make e2e` needs: etcd, kube-apiserver, ec2-metadata-mock
#   e2e-node-tools  what a real node adds: the other Kubernetes components,
#                   containerd, runc and the CNI plugins

E2E_TOOLS_DIR := $(dir $(lastword $(MAKEFILE_LIST)))
E2E_TOOLS := bin/etcd bin/kube-apiserver bin/ec2-metadata-mock bin/promtool
CNI_PLUGINS := bridge host-local loopback portmap
E2E_NODE_TOOLS := bin/kubelet bin/kube-controller-manager bin/kube-scheduler bin/kubectl \
	bin/containerd bin/containerd-shim-runc-v2 bin/ctr bin/runc $(CNI_PLUGINS:%=bin/cni/%)

.PHONY: e2e-tools e2e-node-tools e2e-tools-force
e2e-tools: $(E2E_TOOLS)
e2e-node-tools: $(E2E_TOOLS) $(E2E_NODE_TOOLS)

# The version a tool module pins for a Go module: $(call pin,<tool module>,<Go module>).
pin = $(shell awk '$$1=="require" && $$2=="$(2)" {print $$3} $$1=="$(2)" {print $$2}' $(E2E_TOOLS_DIR)$(1)/go.mod | head -1)

bin/etcd: e2e-tools-force
	@$(E2E_TOOLS_DIR)build.sh etcd metaguard.dev/tools/etcd

# Built with plain go build, a Kubernetes component would report
# v0.0.0-master (the kubelet registers its Node with that version, which
# the API server's skew checks then see); stamp the pinned version as
# Kubernetes' own build does, the same for every component.
KUBE_VERSION := $(call pin,kubernetes,k8s.io/kubernetes)
KUBE_LDFLAGS := $(foreach kv,gitVersion=$(KUBE_VERSION) gitMajor=$(word 1,$(subst ., ,$(KUBE_VERSION:v%=%))) gitMinor=$(word 2,$(subst ., ,$(KUBE_VERSION))) gitTreeState=clean,-X k8s.io/component-base/version.$(kv))
KUBE_COMPONENTS := kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl

$(KUBE_COMPONENTS:%=bin/%): e2e-tools-force
	@MODULE=kubernetes $(E2E_TOOLS_DIR)build.sh $(@F) k8s.io/kubernetes/cmd/$(@F) "$(KUBE_LDFLAGS)"

bin/ec2-metadata-mock: e2e-tools-force
	@$(E2E_TOOLS_DIR)build.sh ec2-metadata-mock github.com/aws/amazon-ec2-metadata-mock/cmd/ec2-metadata-mock

CONTAINERD_VERSION := $(call pin,containerd,github.com/containerd/containerd/v2)
CONTAINERD_LDFLAGS := -X github.com/containerd/containerd/v2/version.Version=$(CONTAINERD_VERSION)

# Static, as containerd's own release builds are; no_btrfs: the btrfs
# snapshotter needs cgo and btrfs headers, and the node uses overlayfs.
bin/containerd bin/containerd-shim-runc-v2 bin/ctr: e2e-tools-force
	@CGO_ENABLED=0 TAGS=no_btrfs MODULE=containerd $(E2E_TOOLS_DIR)build.sh $(@F) github.com/containerd/containerd/v2/cmd/$(@F) "$(CONTAINERD_LDFLAGS)"

# cgo with libseccomp (apt-get install gcc libseccomp-dev pkg-config):
# see e2e/tools/runc/tools.go.
RUNC_VERSION := $(call pin,runc,github.com/opencontainers/runc)
bin/runc: e2e-tools-force
	@CGO_ENABLED=1 TAGS=seccomp $(E2E_TOOLS_DIR)build.sh runc github.com/opencontainers/runc "-X main.version=$(RUNC_VERSION:v%=%)"

# The CNI plugins live in bin/cni/, the directory containerd is told to
# search, so that it finds exactly these and nothing else.
CNI_PLUGINS_VERSION := $(call pin,cni-plugins,github.com/containernetworking/plugins)
bin/cni/%: e2e-tools-force
	@CGO_ENABLED=0 MODULE=cni-plugins $(E2E_TOOLS_DIR)build.sh cni/$* github.com/containernetworking/plugins/plugins/$(filter %/$*,ipam/host-local main/bridge main/loopback meta/portmap) \
		"-X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$(CNI_PLUGINS_VERSION)"

# staticcheck for make lint, pinned like the e2e tools so that lint builds
# from the module cache and runs offline.
bin/staticcheck: e2e-tools-force
	@$(E2E_TOOLS_DIR)build.sh staticcheck honnef.co/go/tools/cmd/staticcheck

# promtool tests the shipped alerting rules. remove_all_sd leaves out
# Prometheus' service-discovery plugins (cloud SDKs, Kubernetes), which
# promtool's rule checks and unit tests never use: a fraction of the build.
bin/promtool: e2e-tools-force
	@TAGS=remove_all_sd $(E2E_TOOLS_DIR)build.sh promtool github.com/prometheus/prometheus/cmd/promtool

e2e-tools-force:
