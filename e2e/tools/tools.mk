# Pinned end-to-end tools, each built from its own Go module under
# e2e/tools/<name> into bin/<name>. Included by the top-level Makefile.
#
# The recipes always run, but e2e/tools/build.sh compares a hash of the tool
# module (go.mod, go.sum, Go files) with bin/.<name>.stamp and rebuilds only
# when the pinned version changed or the binary is missing. Timestamps play
# no part, so a bin/ restored from a cache or a copy is reused as is.

E2E_TOOLS_DIR := $(dir $(lastword $(MAKEFILE_LIST)))
E2E_TOOLS := bin/etcd bin/kube-apiserver bin/ec2-metadata-mock

.PHONY: e2e-tools e2e-tools-force
e2e-tools: $(E2E_TOOLS)

bin/etcd: e2e-tools-force
	@$(E2E_TOOLS_DIR)build.sh etcd metaguard.dev/tools/etcd

# Built with plain go build, kube-apiserver would report v0.0.0-master on
# /version; stamp the pinned version as Kubernetes' own build does.
KUBE_APISERVER_VERSION := $(shell awk '$$1=="require" && $$2=="k8s.io/kubernetes" {print $$3}' $(E2E_TOOLS_DIR)kube-apiserver/go.mod)
KUBE_APISERVER_LDFLAGS := $(foreach kv,gitVersion=$(KUBE_APISERVER_VERSION) gitMajor=$(word 1,$(subst ., ,$(KUBE_APISERVER_VERSION:v%=%))) gitMinor=$(word 2,$(subst ., ,$(KUBE_APISERVER_VERSION))) gitTreeState=clean,-X k8s.io/component-base/version.$(kv))

bin/kube-apiserver: e2e-tools-force
	@$(E2E_TOOLS_DIR)build.sh kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$(KUBE_APISERVER_LDFLAGS)"

bin/ec2-metadata-mock: e2e-tools-force
	@$(E2E_TOOLS_DIR)build.sh ec2-metadata-mock github.com/aws/amazon-ec2-metadata-mock/cmd/ec2-metadata-mock

# staticcheck for make lint, pinned like the e2e tools so that lint builds
# from the module cache and runs offline.
bin/staticcheck: e2e-tools-force
	@$(E2E_TOOLS_DIR)build.sh staticcheck honnef.co/go/tools/cmd/staticcheck

e2e-tools-force:
