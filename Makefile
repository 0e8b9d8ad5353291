# metaguard: a few plain targets. Everything built lands in bin/ (git-ignored).
#
#   make build   the metaguard binary
#   make test    lint, unit tests (-race), bounded fuzzing and the end-to-end suite (root)
#   make demo    a local node sandbox and a guided tour (root)
#   make bench   side-by-side benchmarks into BENCHMARKS.md (root)
#   make lint    gofmt, go vet, staticcheck
#   make manifests  re-render deploy/ from charts/metaguard
#   make image   the container image as an OCI archive, bin/metaguard-image.tar,
#                without a container engine (root; debootstrap)
#   make e2e-node  the end-to-end tests on a real kubelet node (root)

GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION  ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS   := -s -w -X main.version=$(VERSION) -X main.revision=$(REVISION)
# The name make image gives the image (normalised: docker.io/library/...).
IMAGE     ?= metaguard:$(VERSION)
# Bounded fuzzing in CI; the seed corpora also run in every plain go test.
FUZZTIME  ?= 60000x

include e2e/tools/tools.mk

.PHONY: all build test unit e2e e2e-node demo bench lint fuzz image image-engine clean manifests bin/metaguard bin/fakecloud bin/podclient bin/pause bin/imagebuild

all: build

build: bin/metaguard

bin/metaguard:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $@ ./cmd/metaguard

bin/fakecloud:
	CGO_ENABLED=0 $(GO) build -trimpath -o $@ ./e2e/cmd/fakecloud

bin/podclient:
	CGO_ENABLED=0 $(GO) build -trimpath -o $@ ./e2e/cmd/podclient

bin/pause:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $@ ./e2e/cmd/pause

bin/imagebuild:
	CGO_ENABLED=0 $(GO) build -trimpath -o $@ ./deploy/image/cmd/imagebuild

# The AWS SDK for JavaScript's IMDS credential provider, pinned by
# e2e/jsclient/package-lock.json, installed with the machine's Node.js and
# npm into bin/jsclient (git-ignored, like every build output).
JSCLIENT_SRC := e2e/jsclient/package.json e2e/jsclient/package-lock.json e2e/jsclient/imds.js
bin/jsclient/.installed: $(JSCLIENT_SRC)
	rm -rf bin/jsclient && mkdir -p bin/jsclient
	cp $(JSCLIENT_SRC) bin/jsclient/
	cd bin/jsclient && npm ci --no-audit --no-fund --omit=dev --loglevel=error
	touch $@
bin/jsclient: bin/jsclient/.installed

test: lint unit fuzz e2e e2e-node

unit:
	$(GO) vet ./...
	$(GO) test -race -count=1 ./...
	# The memory-cost measurements are meaningless under -race (its shadow
	# memory and bigger stacks): they run once without it.
	$(GO) test -count=1 -run 'TestMeasuredCosts|TestStripping' ./proxy

# The node sandbox with metaguard as a process; the real-node tests
# (TestNode*) are e2e-node's.
e2e: e2e-tools bin/metaguard bin/fakecloud bin/podclient bin/jsclient
	$(GO) test -tags e2e -count=1 -timeout 30m -skip '^TestNode' ./e2e/...

# metaguard as users run it: its image (make image) on a real kubelet,
# containerd and runc, from the shipped manifests.
e2e-node: e2e-node-tools image bin/fakecloud bin/podclient bin/pause
	$(GO) test -tags e2e -count=1 -timeout 30m -run '^TestNode' ./e2e/...

demo: e2e-tools bin/metaguard bin/fakecloud bin/podclient
	$(GO) run ./e2e/cmd/demo

# BENCHFLAGS: e.g. -baseline main (a revision measured beside the checkout,
# for the no-regression targets) or -variant GOMAXPROCS=1; needs wrk,
# nginx-light and linux-perf.
BENCHFLAGS ?=
bench: e2e-tools bin/metaguard bin/fakecloud bin/podclient
	$(GO) run ./e2e/cmd/bench -out BENCHMARKS.md $(BENCHFLAGS)

lint: bin/staticcheck
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet -tags e2e ./...
	bin/staticcheck -tags e2e ./...

# Each target fuzzes for a bounded number of inputs (FUZZTIME; about 10 s
# each here), not a duration: Go 1.26's fuzz coordinator can fail a
# duration-bounded run with "context deadline exceeded" when the time runs
# out under CPU contention (golang/go#75804, fixed in Go 1.27), and a
# count has no deadline to race. The seed corpora under testdata/fuzz also
# run in every plain go test.
# -fuzzminimizetime 0: minimising a new input can eat the whole budget.
FUZZ = $(GO) test -run '^$$' -fuzzminimizetime 0
fuzz:
	$(FUZZ) -fuzz '^FuzzForwardedPathIsTheMatchedPath$$' -fuzztime $(FUZZTIME) ./proxy
	$(FUZZ) -fuzz '^FuzzCanonicalize$$' -fuzztime $(FUZZTIME) ./proxy
	$(FUZZ) -fuzz '^FuzzStripNeverLeaksAHiddenEntry$$' -fuzztime $(FUZZTIME) ./proxy
	$(FUZZ) -fuzz '^FuzzStripTextNeverLeaksAHiddenEntry$$' -fuzztime $(FUZZTIME) ./proxy
	$(FUZZ) -fuzz '^FuzzStripJSONIsValidAndIdempotent$$' -fuzztime $(FUZZTIME) ./proxy
	$(FUZZ) -fuzz '^FuzzStripAnswerDependsOnlyOnVisibleEntries$$' -fuzztime $(FUZZTIME) ./proxy
	$(FUZZ) -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./proxy/policy
	$(FUZZ) -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME) ./proxy/audit
	# Each input runs two whole suggestions (about 10 ms): 400 of them.
	$(FUZZ) -fuzz '^FuzzOnePodCannotWidenWhatItsGroupIsGranted$$' -fuzztime 400x ./proxy/policy/suggest
	$(FUZZ) -fuzz '^FuzzCanonicalPath$$' -fuzztime $(FUZZTIME) ./proxy/policy

# deploy/ is rendered from the chart (one source of truth); a unit test
# fails when the committed files differ from a fresh render.
manifests:
	$(GO) test -count=1 -run '^TestDeployIsRenderedFromChart$$' ./deploy -update

# The image as an OCI archive, without a container engine: a Debian root
# from debootstrap (root; the first build downloads Debian's packages, later
# ones reuse bin/image-cache), the iptables wrapper and bin/metaguard.
# Push it with any OCI tool, e.g. skopeo copy oci-archive:bin/metaguard-image.tar docker://REGISTRY/metaguard:TAG
image: bin/metaguard bin/imagebuild
	bin/imagebuild metaguard -out bin/metaguard-image.tar -ref $(IMAGE) -binary bin/metaguard \
		-wrapper deploy/image/iptables-wrapper -version $(VERSION) -revision $(REVISION)

# The same image from the Dockerfile, for machines with a container engine.
ENGINE ?= $(shell command -v docker || command -v podman)

image-engine:
	@test -n "$(ENGINE)" || { echo "make image-engine needs docker or podman (make image needs neither)"; exit 1; }
	$(ENGINE) build --build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) -t $(IMAGE) .

clean:
	rm -rf bin
