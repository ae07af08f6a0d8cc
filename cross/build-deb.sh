#!/usr/bin/env bash
# Packages the agent for Raspberry Pi OS / Jetson Linux / Debian as a .deb:
#   cross/build-deb.sh ARCH WHEEL [WHEELHOUSE] [OUTDIR]
# ARCH is arm64 or amd64; WHEEL the agent's wheel built for that architecture; WHEELHOUSE an
# optional folder of dependency wheels for offline installs (pip download --platform ...).
# The package holds the wheel(s), the systemd unit, a board-aware /etc/lepton/agent.toml and
# maintainer scripts that create the venv, the lepton user and the credential stubs.
set -euo pipefail
cd "$(dirname "$0")/.."
arch=${1:?arch (arm64|amd64)}; wheel=${2:?wheel}; wheelhouse=${3:-}; outdir=${4:-build/deb}
version=$(python3 -c "import tomllib;print(tomllib.load(open('pyproject.toml','rb'))['project']['version'])" 2>/dev/null \
  || sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
install -d "$root/DEBIAN" "$root/opt/lepton/wheels" "$root/opt/lepton/wheelhouse" \
  "$root/lib/systemd/system" "$root/etc/lepton" "$root/usr/bin"
cp "$wheel" "$root/opt/lepton/wheels/"
if [ -n "$wheelhouse" ]; then cp "$wheelhouse"/*.whl "$root/opt/lepton/wheelhouse/"; cp "$wheel" "$root/opt/lepton/wheelhouse/"; fi
cp systemd/lepton-agent.service "$root/lib/systemd/system/"
cat > "$root/etc/lepton/agent.toml" <<'TOML'
# Lepton Edge agent configuration. Check it with: lepton-agent config check /etc/lepton/agent.toml
# Board overlays: rpi4, rpi5, jetson-orin-nano, x86-dev (see /opt/lepton/venv/share/lepton/board_configs).
[agent]
device_id = "change-me"
site = "change-me"
state_dir = "/var/lib/lepton-agent"

[mqtt]
# The password goes in /etc/lepton/credentials/mqtt-password, never here.
broker = "mqtt://127.0.0.1:1883"
TOML
ln -s /opt/lepton/venv/bin/lepton-agent "$root/usr/bin/lepton-agent"
cp cross/debian/postinst cross/debian/prerm cross/debian/postrm "$root/DEBIAN/"
echo "/etc/lepton/agent.toml" > "$root/DEBIAN/conffiles"
cat > "$root/DEBIAN/control" <<CONTROL
Package: lepton-edge
Version: $version
Architecture: $arch
Maintainer: Lepton Edge <dev@lepton-edge.local>
Depends: python3 (>= 3.10), python3-venv, adduser, passwd
Recommends: mosquitto-clients
Section: misc
Priority: optional
Description: Lepton Edge on-device AI agent
 Captures camera streams, runs quantized TFLite models through LiteRT with native
 pre/post-processing kernels, keeps results in a durable outbox and syncs them over MQTT 5.
CONTROL
mkdir -p "$outdir"
deb="$outdir/lepton-edge_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
echo "$deb"
