#!/usr/bin/env bash
# The whole agent on arm64, emulated: in the rootfs of cross/rootfs.sh, build the aarch64 wheel
# (its cffi extension compiled by the target's gcc, NEON variant), package it as a .deb, install
# it (venv, lepton user, unit, credentials), then run `lepton-agent diag --json` and
# `lepton-agent run` as the lepton user on a generated clip, publishing to a mosquitto on the
# host's loopback, and check that every record reaches ingest. Needs root. `make test-arm`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "smoke-arm64: needs root (chroot)" >&2; exit 2; }
export LEPTON_ROOTFS=${LEPTON_ROOTFS:-$PWD/build/rootfs-arm64}
cross/rootfs.sh
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python3
exec "$python" cross/smoke_arm64.py "$@"
