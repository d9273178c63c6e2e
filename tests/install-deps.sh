#!/usr/bin/env bash
# Installs the Debian packages skiff's build and its end-to-end tests need. Run as root; idempotent.
set -euo pipefail

packages=(
  # build: protoc for the gRPC protos, clang/libclang for the rocksdb crate
  protobuf-compiler clang libclang-dev pkg-config
  # the real test bed
  docker-registry apache2-utils containerd runc crun fuse3 skopeo umoci busybox-static stargz-snapshotter
  iproute2 ca-certificates
  # systemd-analyze checks contrib/systemd/skiffd.service
  systemd
  # skiff-bench: the chart font; debootstrap for the Debian-based corpus images
  fonts-dejavu-core debootstrap
  # containerd's snapshotter conformance suite (../shared/snapshotter-testsuite) and skiff-bench's stargz
  # peer (bench/peers/stargz), built from Go sources
  golang-go golang-github-containerd-containerd-dev golang-github-containerd-stargz-snapshotter-dev
)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
else
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends "${missing[@]}"
  # The Debian containerd package starts a system containerd; the tests start their own and need none.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet containerd 2>/dev/null; then
    systemctl stop containerd || true
  fi
fi
# A hybrid cgroup host (v1 hierarchies, v2 at /sys/fs/cgroup/unified) may leave controllers no v1
# hierarchy claims on the v2 root; crun then refuses to create any container. Mount each of them as its
# own v1 hierarchy, the way a hybrid systemd host does (possible while no v2 cgroup enables them).
unified=/sys/fs/cgroup/unified
if [ "$(stat -f -c %T /sys/fs/cgroup 2>/dev/null)" = tmpfs ] && [ -r "$unified/cgroup.controllers" ] \
  && [ -z "$(cat "$unified/cgroup.subtree_control")" ]; then
  for controller in $(cat "$unified/cgroup.controllers"); do
    mkdir -p "/sys/fs/cgroup/$controller"
    mount -t cgroup -o "$controller" cgroup "/sys/fs/cgroup/$controller"
    echo "install-deps: cgroup controller $controller moved from the v2 root to a v1 hierarchy (for crun)"
  done
fi
