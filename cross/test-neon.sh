#!/usr/bin/env bash
# Cross-compiles the native kernels and their C self-test for aarch64 with Debian's
# gcc-aarch64-linux-gnu and runs it under qemu-user, comparing every NEON kernel with the
# portable C reference on odd sizes, strides and unaligned rows. Well under a minute.
#   cross/test-neon.sh [ITERATIONS]        (QEMU_CPU defaults to cortex-a72, a Pi 4)
set -euo pipefail
cd "$(dirname "$0")/.."
iterations=${1:-3000}
cc=${CROSS_CC:-aarch64-linux-gnu-gcc}
qemu=$(command -v qemu-aarch64-static || command -v qemu-aarch64 || true)
if [ "$(uname -m)" = aarch64 ]; then qemu=env; fi  # on a board the binary runs natively
missing=()
command -v "$cc" >/dev/null || missing+=(gcc-aarch64-linux-gnu)
[ -n "$qemu" ] || missing+=(qemu-user-static)
if [ ${#missing[@]} -gt 0 ]; then
  echo "test-neon: missing ${missing[*]}; install with: sudo apt-get install ${missing[*]}" >&2
  exit 2
fi
out=build/selftest-aarch64
make -s -f native/tests/selftest.mk CC="$cc" CFLAGS="-O2 -march=armv8-a" OUT="$out"
file "$out/selftest" | grep -q "ARM aarch64" || { echo "test-neon: not an aarch64 binary" >&2; exit 1; }
for cpu in ${QEMU_CPUS:-cortex-a72 cortex-a76}; do
  echo "== qemu-aarch64 -cpu $cpu"
  if [ "$qemu" = env ]; then "$out/selftest" "$iterations"; break; fi
  QEMU_CPU=$cpu "$qemu" -L /usr/aarch64-linux-gnu "$out/selftest" "$iterations"
done
