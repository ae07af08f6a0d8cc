"""Reading CPU temperature and throttling from sysfs (Raspberry Pi, Jetson, generic Linux)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from agent.core.thermal import ThermalReading

# Zone types that measure the SoC/CPU: Raspberry Pi, Jetson, common x86 and Rockchip names.
CPU_ZONE_TYPES = ("cpu-thermal", "cpu_thermal", "CPU-therm", "cpu", "soc_thermal",
                  "x86_pkg_temp", "acpitz", "tsens_tz_sensor0")
# Raspberry Pi firmware's throttle flags (bit 2: currently throttled, bit 1: arm freq capped).
PI_THROTTLED = "devices/platform/soc/soc:firmware/get_throttled"


@dataclass
class SysfsThermal:
    """Reads ``<root>/class/thermal`` and the Pi's ``get_throttled``; ``root`` is /sys."""

    root: Path = Path("/sys")

    def cpu_zone(self) -> Path | None:
        zones = sorted((self.root / "class" / "thermal").glob("thermal_zone*"))
        typed = []
        for zone in zones:
            try:
                typed.append((zone, (zone / "type").read_text().strip()))
            except OSError:
                continue
        for wanted in CPU_ZONE_TYPES:
            for zone, kind in typed:
                if kind == wanted:
                    return zone
        return typed[0][0] if typed else None

    def read(self) -> ThermalReading:
        temp: float | None = None
        zone = self.cpu_zone()
        if zone is not None:
            try:
                temp = int((zone / "temp").read_text().strip()) / 1000.0
            except (OSError, ValueError):
                temp = None
        throttled = False
        flags = self.root / PI_THROTTLED
        with contextlib.suppress(OSError, ValueError):
            throttled = bool(int(flags.read_text().strip(), 16) & 0x6)
        return ThermalReading(temp, throttled)
