#!/usr/bin/env bash
# Builds an arm64 Debian bookworm rootfs for the emulated smoke test: debootstrap's first stage
# here, the second stage inside a chroot through qemu-aarch64-static, then python3/venv/pip/gcc.
# The result is cached as a tarball keyed by this script and its inputs, so a rerun restores it
# in seconds. Needs root (chroot, mounts). Measured here: build ~4 min, restore ~5 s.
#   cross/rootfs.sh            -> build/rootfs-arm64 (override with LEPTON_ROOTFS)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOTFS=${LEPTON_ROOTFS:-$PWD/build/rootfs-arm64}
CACHE=${LEPTON_ROOTFS_CACHE:-$PWD/build/rootfs-cache}
SUITE=bookworm
MIRROR=${LEPTON_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=python3,python3-venv,python3-pip,python3-dev,gcc,libc6-dev,ca-certificates,adduser,systemd,procps
key=$( (cat "$0"; echo "$SUITE $MIRROR $PACKAGES") | sha256sum | cut -c1-16)
tarball=$CACHE/rootfs-$SUITE-arm64-$key.tar.gz

[ "$(id -u)" = 0 ] || { echo "rootfs: needs root (debootstrap, chroot)" >&2; exit 2; }
for tool in debootstrap qemu-aarch64-static; do
  command -v $tool >/dev/null || { echo "rootfs: missing $tool: apt-get install debootstrap qemu-user-static binfmt-support" >&2; exit 2; }
done

ensure_binfmt() {
  # The chroot's programs are aarch64: the kernel must hand them to qemu (flag F: works in a chroot).
  mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    update-binfmts --enable qemu-aarch64 2>/dev/null || true
  fi
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || { echo "rootfs: cannot register qemu-aarch64 with binfmt_misc" >&2; exit 2; }
}

in_chroot() {  # a clean environment: host variables must not leak into the target
  env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 QEMU_CPU=${QEMU_CPU:-cortex-a72} \
    chroot "$ROOTFS" "$@"
}

ensure_binfmt
if [ -f "$ROOTFS/.lepton-rootfs-$key" ]; then
  echo "rootfs: $ROOTFS is current ($key)"
  exit 0
fi
rm -rf "$ROOTFS"
mkdir -p "$ROOTFS" "$CACHE"
if [ -f "$tarball" ]; then
  started=$(date +%s)
  tar -C "$ROOTFS" -xzf "$tarball"
  echo "rootfs: restored $tarball in $(( $(date +%s) - started ))s"
  exit 0
fi
started=$(date +%s)
debootstrap --arch=arm64 --foreign --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR"
cp /usr/bin/qemu-aarch64-static "$ROOTFS/usr/bin/"
in_chroot /debootstrap/debootstrap --second-stage
# pip inside the rootfs must trust what the host trusts (HTTPS may be intercepted here).
cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
echo "deb $MIRROR $SUITE main" > "$ROOTFS/etc/apt/sources.list"
in_chroot apt-get clean
touch "$ROOTFS/.lepton-rootfs-$key"
tar -C "$ROOTFS" -czf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
echo "rootfs: built in $(( $(date +%s) - started ))s, cached as $tarball ($(du -h "$tarball" | cut -f1))"
