"""Thermal governor: lowers the inference rate step by step when the board runs hot or is
throttled, and restores it, with hysteresis, when it cools. Pure: readings in, level out."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ThermalReading:
    temp_c: float | None
    throttled: bool = False


@dataclass
class ThermalGovernor:
    """Level 0 runs everything; each level halves the inference rate (static frames first)."""

    max_temp_c: float = 75.0
    hysteresis_c: float = 5.0
    max_level: int = 3
    step_c: float = 3.0
    level: int = 0
    changes: int = 0

    def update(self, reading: ThermalReading) -> int:
        """The level to run at after this reading: one step at a time, either way.

        Level L steps up at ``max_temp_c + step_c * L`` (or when throttled) and down below
        ``max_temp_c - hysteresis_c + step_c * (L - 1)``; in between it holds.
        """
        temp = reading.temp_c
        before = self.level
        up_at = self.max_temp_c + self.step_c * self.level
        down_below = self.max_temp_c - self.hysteresis_c + self.step_c * (self.level - 1)
        if self.level < self.max_level and (reading.throttled or (temp is not None and temp >= up_at)):
            self.level += 1
        elif self.level > 0 and not reading.throttled and (temp is None or temp < down_below):
            self.level -= 1
        if self.level != before:
            self.changes += 1
        return self.level

    def frame_stride(self, motion_gated: bool) -> int:
        """Keep one frame in this many (after the motion gate)."""
        if motion_gated:
            return 1 if self.level <= 1 else 1 << (self.level - 1)
        return 1 << self.level

    def static_every_n_factor(self, motion_gated: bool) -> int:
        """How much longer the motion gate may skip static frames (level 1 and up)."""
        return 4 if motion_gated and self.level >= 1 else 1
