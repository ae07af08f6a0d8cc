"""A trusted clock for expiry checks on devices whose own clock cannot be trusted.

Many boards have no battery-backed RTC: they boot in 1970 (or at the last saved time) until NTP
answers, and NTP itself is unauthenticated. An attacker who can set such a clock back can make an
expired (revoked-by-time) bundle document look valid again; the "indefinite freeze" of TUF.

The rule (issue 18 item 5): ``trusted_now = max(device clock, last time learned from a signed
document, the last trusted_now handed out)``. The floor is persisted by the runtime, so trusted
time never goes backwards, across restarts too. The device clock still moves it forward (so
that documents do expire on a device that never hears from the fleet again). Pure logic: the
caller reads the device clock and stores the state.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

# Beyond this the device clock is reported as skewed (diag, status): five minutes covers NTP
# slew after boot and ordinary drift; a board that booted in 1970 is decades behind.
DEFAULT_SKEW_THRESHOLD_S = 300.0


@dataclass(frozen=True)
class ClockSkew:
    """How far the device clock is behind trusted time, and whether that is worth reporting."""

    seconds: float  # trusted_now - device clock; 0 when the device clock is the latest
    threshold_s: float
    exceeds: bool


@dataclass(frozen=True)
class TrustedClock:
    """The persisted floor of trusted time (Unix seconds) and the latest signed time seen.

    ``floor`` never decreases: every method returns a new clock whose floor is at least this
    one's. ``learned`` is the latest ``issued_at`` of a verified signed document (kept apart
    for status: it says how old the device's last word from the fleet is)."""

    floor: float = 0.0
    learned: float = 0.0

    def __post_init__(self) -> None:
        for name in ("floor", "learned"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"trusted clock {name} {value!r} is not a finite time >= 0")

    def now(self, device_now: float) -> tuple[float, TrustedClock]:
        """Trusted time now, and the clock to persist (its floor moved up to that time).

        A device reading that is not a finite number (a broken RTC driver) is ignored."""
        reading = device_now if _usable(device_now) else 0.0
        trusted = max(self.floor, self.learned, reading)
        return trusted, TrustedClock(floor=trusted, learned=self.learned)

    def learn(self, signed_time: float) -> TrustedClock:
        """The clock after a verified signed document said it is at least ``signed_time``."""
        if not _usable(signed_time):
            return self
        learned = max(self.learned, float(signed_time))
        return TrustedClock(floor=max(self.floor, learned), learned=learned)

    def skew(self, device_now: float,
             threshold_s: float = DEFAULT_SKEW_THRESHOLD_S) -> ClockSkew:
        """How far the device clock lags trusted time (a clock set back, or an RTC-less boot).

        A device clock ahead of the last signed time is normal (time passed since the last
        document) and is not skew; an unreadable device clock counts as infinitely behind."""
        if not _usable(device_now):
            return ClockSkew(math.inf, threshold_s, True)
        trusted, _ = self.now(device_now)
        behind = trusted - device_now
        return ClockSkew(behind, threshold_s, behind > threshold_s)

    def to_json(self) -> str:
        """The state for the runtime to persist (and read back with :meth:`from_json`)."""
        return json.dumps({"floor": self.floor, "learned": self.learned}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrustedClock:
        try:
            data = json.loads(text)
            return cls(floor=float(data["floor"]), learned=float(data["learned"]))
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"trusted clock state is unreadable: {exc}") from exc


def _usable(t: float) -> bool:
    return isinstance(t, (int, float)) and math.isfinite(t) and t >= 0
