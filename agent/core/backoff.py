"""Capped, jittered exponential backoff (pure: the caller does the waiting)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays for successive retries: ``initial * multiplier**n`` capped at ``maximum``.

    Full jitter would let two retries land at nearly zero; "equal jitter" keeps each delay
    in ``[d * (1 - jitter), d]`` so a flapping camera or broker is never hammered.
    """

    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.5
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = 0

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.maximum < self.initial:
            raise ValueError("backoff needs 0 < initial <= maximum")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("backoff jitter must be within [0, 1]")
        if self.multiplier < 1.0:
            raise ValueError("backoff multiplier must be >= 1")

    def next_delay(self) -> float:
        """Return the delay before the next attempt and count the attempt."""
        capped = min(self.maximum, self.initial * self.multiplier ** min(self.attempts, 64))
        self.attempts += 1
        return capped * (1.0 - self.jitter * self.rng.random())

    def reset(self) -> None:
        """Forget past failures (call after a success)."""
        self.attempts = 0
