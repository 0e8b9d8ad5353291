# metaguard: a few plain targets. Everything built lands in bin/ (git-ignored).
#
#   make build   the metaguard binary
#   make test    unit tests (-race) and the end-to-end suite (root)
#   make demo    a local node sandbox and a guided tour (root)
#   make bench   side-by-side benchmarks into BENCHMARKS.md (root)
#   make lint    gofmt, go vet, staticcheck
#   make image   the container image (needs a container engine)

GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
STATICCHECK_VERSION := v0.8.2
# Bounded fuzzing in CI; the seed corpora also run in every plain go test.
FUZZTIME  ?= 20s

include e2e/tools/tools.mk

.PHONY: all build test unit e2e demo bench lint fuzz image clean bin/metaguard bin/fakecloud bin/podclient

all: build

build: bin/metaguard

bin/metaguard:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $@ ./cmd/metaguard

bin/fakecloud:
	CGO_ENABLED=0 $(GO) build -trimpath -o $@ ./e2e/cmd/fakecloud

bin/podclient:
	CGO_ENABLED=0 $(GO) build -trimpath -o $@ ./e2e/cmd/podclient

test: unit e2e

unit:
	$(GO) vet ./...
	$(GO) test -race -count=1 ./...

e2e: e2e-tools bin/metaguard bin/fakecloud bin/podclient
	$(GO) test -tags e2e -count=1 -timeout 30m ./e2e/...

demo: e2e-tools bin/metaguard bin/fakecloud bin/podclient
	$(GO) run ./e2e/cmd/demo

bench: e2e-tools bin/metaguard bin/fakecloud bin/podclient
	$(GO) run ./e2e/cmd/bench -out BENCHMARKS.md

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

fuzz:
	$(GO) test -run XXX -fuzz FuzzForwardedPathIsTheMatchedPath -fuzztime $(FUZZTIME) ./proxy
	$(GO) test -run XXX -fuzz FuzzStripNeverLeaksAHiddenEntry -fuzztime $(FUZZTIME) ./proxy

ENGINE ?= $(shell command -v docker || command -v podman)

image:
	@test -n "$(ENGINE)" || { echo "make image needs docker or podman"; exit 1; }
	$(ENGINE) build --build-arg VERSION=$(VERSION) --build-arg REVISION=$$(git rev-parse HEAD) -t metaguard:$(VERSION) .

clean:
	rm -rf bin
