#!/bin/sh
# build.sh NAME PACKAGE [LDFLAGS]: build one pinned e2e tool into bin/NAME
# (GOFLAGS, such as build tags, is part of the stamp too).
#
# Each tool is its own Go module under e2e/tools/NAME, so its (large)
# dependency graph never touches metaguard's go.mod. Commands released
# together share one module, named by MODULE (default NAME): the
# Kubernetes components all come from e2e/tools/kubernetes, so they are
# always one version. TAGS are Go build tags; cgo follows the go command's
# own rule (on when a C compiler is found) unless CGO_ENABLED is set.
#
# The binary is rebuilt only when the pinned version changes:
# bin/.NAME.stamp records a hash of the tool module's go.mod, go.sum and Go
# files plus the package, ldflags, tags and cgo setting, and the build runs
# only when that differs or the binary is missing. File timestamps are not
# used, so a bin/ restored from a CI cache or copied from another checkout
# is trusted as long as its stamp matches.
#
# GOCACHE and GOMODCACHE are left alone so that CI can cache them; a rebuild
# after a version bump then recompiles only what changed.
set -eu

name=$1
pkg=$2
ldflags=${3:-}
module=${MODULE:-$name}
tags=${TAGS:-}
root=$(cd "$(dirname "$0")/../.." && pwd)
dir=$root/e2e/tools/$module
bin=$root/bin
stamp=$bin/.$name.stamp

want=$(cd "$dir" && cat go.mod go.sum *.go | sha256sum | cut -d' ' -f1)
want="$want $pkg${ldflags:+ $ldflags}${tags:+ tags=$tags}${CGO_ENABLED:+ cgo=$CGO_ENABLED}${GOFLAGS:+ $GOFLAGS}"

if [ -x "$bin/$name" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
	exit 0
fi

echo "building bin/$name as pinned in e2e/tools/$module/go.mod (minutes on a cold Go cache)" >&2
mkdir -p "$(dirname "$bin/$name")" "$(dirname "$stamp")"
# -buildvcs=false: the tool's VCS state is the pin in go.mod, not metaguard's checkout.
(cd "$dir" && go build -buildvcs=false ${tags:+-tags "$tags"} -ldflags="$ldflags" -o "$bin/$name.tmp" "$pkg")
mv -f "$bin/$name.tmp" "$bin/$name"
printf '%s\n' "$want" >"$stamp"
