"""A generated 3-axis accelerometer signal of a rotating machine, with bearing faults on demand.

Normal: shaft rotation (1x and 2x harmonics) plus broadband noise. A bearing outer-race fault
adds a train of impacts at the fault frequency, each ringing at a structural resonance; its
severity grows the impacts. Used to train the shipped sensor model
(models/make_sensor_model.py) and to drive serial-port tests with realistic traffic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

RATE_HZ = 400.0
CHANNELS = ("ax", "ay", "az")


@dataclass
class VibrationSignal:
    """Endless samples at ``rate_hz``; ``fault`` (0 = healthy .. 1 = severe) may change any time."""

    rate_hz: float = RATE_HZ
    seed: int = 0
    shaft_hz: float = 24.7
    fault_hz: float = 88.3  # outer-race defect frequency for this bearing and shaft speed
    resonance_hz: float = 143.0
    fault: float = 0.0
    _t: int = 0
    _rng: np.random.Generator = field(init=False)
    _phase: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        self._phase = self._rng.uniform(0, 2 * np.pi, 3)

    def samples(self, n: int) -> np.ndarray:
        """The next ``n`` samples, shape (n, 3), in g."""
        t = (self._t + np.arange(n)) / self.rate_hz
        self._t += n
        gains = np.array([1.0, 0.7, 0.35])
        shaft = (np.sin(2 * np.pi * self.shaft_hz * t[:, None] + self._phase) * 0.30
                 + np.sin(4 * np.pi * self.shaft_hz * t[:, None] + 2 * self._phase) * 0.08)
        noise = self._rng.normal(0, 0.05, (n, 3))
        out = shaft * gains + noise
        if self.fault > 0:
            since = np.mod(t, 1.0 / self.fault_hz)  # time since the last impact
            ring = np.exp(-since * 260.0) * np.sin(2 * np.pi * self.resonance_hz * since)
            jitter = 1.0 + self._rng.normal(0, 0.15, n)
            out += (ring * jitter * (0.05 + 0.9 * self.fault))[:, None] * np.array([0.6, 1.0, 0.8])
        out[:, 2] += 1.0  # gravity on z
        result: np.ndarray = out.astype(np.float32)
        return result


def csv_lines(samples: np.ndarray) -> bytes:
    """The samples as the CSV lines an accelerometer board writes (``ax,ay,az``)."""
    return "".join(f"{x:.4f},{y:.4f},{z:.4f}\n" for x, y, z in samples).encode()
