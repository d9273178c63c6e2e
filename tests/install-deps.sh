#!/usr/bin/env bash
# Installs the Debian packages skiff's build and its end-to-end tests need. Run as root; idempotent.
set -euo pipefail

packages=(
  # build: protoc for the gRPC protos, clang/libclang for the rocksdb crate
  protobuf-compiler clang libclang-dev pkg-config
  # the real test bed
  docker-registry apache2-utils containerd runc fuse3 skopeo umoci busybox-static stargz-snapshotter
  iproute2 ca-certificates
  # skiff-bench: the chart font
  fonts-dejavu-core
  # containerd's snapshotter conformance suite (../shared/snapshotter-testsuite), built from Go sources
  golang-go golang-github-containerd-containerd-dev
)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${missing[@]}"
# The Debian containerd package starts a system containerd; the tests start their own and need none.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet containerd 2>/dev/null; then
  systemctl stop containerd || true
fi
