# metaguard image: a static Go binary on a slim Debian that carries both
# iptables back ends (metaguard execs iptables through coreos/go-iptables,
# so distroless/static will not do) and picks the node's at run time.
#
#   docker build --build-arg VERSION=$(git describe --tags --always --dirty) \
#     --build-arg REVISION=$(git rev-parse HEAD) -t metaguard:dev .

ARG GO_VERSION=1.26

# Build on the builder's own platform and cross-compile: with buildx,
# --platform linux/amd64,linux/arm64 then needs no emulation.
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
# Dependencies first: this layer is reused until go.mod or go.sum change.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG REVISION=unknown
ARG TARGETOS
ARG TARGETARCH
RUN CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION} -X main.revision=${REVISION}" \
      -o /out/metaguard ./cmd/metaguard

FROM debian:bookworm-slim
# iptables brings both back ends (iptables-nft and iptables-legacy, 1.8.9);
# conntrack flushes connections opened before the redirect existed.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables conntrack \
 && rm -rf /var/lib/apt/lists/*
# The wrapper answers to the plain iptables names from /usr/local/sbin,
# which comes before /usr/sbin in PATH (set here, not left to the base
# image), so Debian's alternatives symlinks stay untouched and the root
# filesystem can be read-only. metaguard itself runs iptables-nft or
# iptables-legacy by full name after its own detection.
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
COPY deploy/image/iptables-wrapper /usr/local/sbin/iptables-wrapper
RUN chmod 0755 /usr/local/sbin/iptables-wrapper \
 && for name in iptables iptables-save iptables-restore \
        ip6tables ip6tables-save ip6tables-restore; do \
      ln -s iptables-wrapper "/usr/local/sbin/${name}"; \
    done \
 && /usr/sbin/iptables-nft --version && /usr/sbin/iptables-legacy --version
COPY --from=build /out/metaguard /usr/local/bin/metaguard

ARG VERSION=dev
ARG REVISION=
ARG CREATED=
ARG SOURCE=
LABEL org.opencontainers.image.title="metaguard" \
      org.opencontainers.image.description="Per-node gate between Kubernetes pods and the cloud instance metadata service" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"

# No USER: the daemon must be uid 0 to use iptables (Kubernetes gives a
# non-root process no effective capabilities). The DaemonSet drops every
# capability but NET_ADMIN and NET_RAW and makes the root filesystem
# read-only. `metaguard validate` and `explain` run fine as any user:
#   docker run --rm --user 65534 -v $PWD:/p metaguard:dev validate --config /p/policy.yaml
ENTRYPOINT ["/usr/local/bin/metaguard"]
CMD ["run"]
