#!/usr/bin/env bash
# Builds the stargz peer for `skiff-bench run --modes …,stargz`: stargz-snapshotter's daemon
# `containerd-stargz-grpc`, offline, from Debian 12's Go 1.19 and the stargz-snapshotter 0.12 library
# sources (golang-github-containerd-stargz-snapshotter-dev; Debian ships the library but not the daemon).
# main.go beside this script is the daemon: the library's filesystem and snapshotter served as
# containerd's snapshots gRPC API on a unix socket.
#
# Usage (root): build.sh [OUT_DIR]     (default OUT_DIR: /usr/local/bin) -> OUT_DIR/containerd-stargz-grpc
# Env: SKIP_APT=1  don't apt-get install
set -euo pipefail

OUT_DIR=${1:-/usr/local/bin}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PKGS=(golang-go golang-github-containerd-stargz-snapshotter-dev)

die() { echo "build.sh: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"
if [ "${SKIP_APT:-0}" != 1 ]; then
  # shellcheck source=../../../tests/apt.sh
  . "$HERE/../../../tests/apt.sh"
  apt_install_missing build.sh "${PKGS[@]}"
fi

command -v go >/dev/null || die "go missing: apt-get install golang-go"
LIB=/usr/share/gocode/src/github.com/containerd/stargz-snapshotter
[ -f "$LIB/snapshot/snapshot.go" ] && [ -f "$LIB/fs/fs.go" ] \
  || die "stargz-snapshotter library sources missing under $LIB: apt-get install golang-github-containerd-stargz-snapshotter-dev"

# go needs a writable build cache; HOME may be unset under CI
if [ -z "${GOCACHE:-}" ] && [ -z "${HOME:-}" ] && [ -z "${XDG_CACHE_HOME:-}" ]; then
  export GOCACHE=/tmp/skiff-go-build-cache
fi
GW=$(mktemp -d /tmp/stargz-peer-gopath.XXXXXX)
trap 'rm -rf "$GW"' EXIT
mkdir -p "$GW/src/stargzpeer" "$OUT_DIR"
cp "$HERE/main.go" "$GW/src/stargzpeer/"
cd "$GW/src/stargzpeer"
echo "build.sh: go build ($(go version | awk '{print $3}'), stargz-snapshotter-dev $(dpkg-query -W -f='${Version}' golang-github-containerd-stargz-snapshotter-dev)) -> $OUT_DIR/containerd-stargz-grpc"
# CGO off: golang-go only recommends gcc.
GO111MODULE=off GOFLAGS= GOPROXY=off GOPATH="$GW:/usr/share/gocode" CGO_ENABLED=0 \
  go build -trimpath -o "$OUT_DIR/containerd-stargz-grpc" . || die "go build failed (errors above)"
# -h exits 2 by design; its usage must name the flags.
"$OUT_DIR/containerd-stargz-grpc" -h 2>&1 | grep -q -- -address \
  || die "the built $OUT_DIR/containerd-stargz-grpc does not run"
echo "build.sh: built $OUT_DIR/containerd-stargz-grpc"
