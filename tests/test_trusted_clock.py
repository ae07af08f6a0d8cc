"""The trusted clock (issue 18 item 5): trusted time is the latest of the device clock, the last
time learned from a signed document and every trusted time handed out before, so it never goes
backwards, whatever the device clock does, across restarts (persisted state in and out)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.ota.clock import DEFAULT_SKEW_THRESHOLD_S, TrustedClock

# What a device clock can read: sane times, 1970 after an RTC-less boot, jumps far ahead,
# and garbage from a broken driver.
readings = st.one_of(
    st.floats(0, 4e9, allow_nan=False),
    st.just(0.0),
    st.sampled_from([math.nan, math.inf, -math.inf, -1.0, -1e9]),
)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("read"), readings),
        st.tuples(st.just("learn"), st.one_of(st.integers(0, 4_000_000_000).map(float), readings)),
        st.tuples(st.just("restart"), st.just(0.0)),
    ),
    max_size=60,
)


def usable(t: float) -> bool:
    return math.isfinite(t) and t >= 0


@settings(max_examples=400, deadline=None)
@given(steps)
def test_trusted_time_never_goes_backwards(ops: list[tuple[str, float]]) -> None:
    clock = TrustedClock()
    handed_out: list[float] = []
    learned: list[float] = []
    for op, value in ops:
        if op == "read":
            now, clock = clock.now(value)
            handed_out.append(now)
            if usable(value):
                assert now >= value  # never behind the device clock
            assert all(now >= t for t in learned)  # never behind a signed time
        elif op == "learn":
            before = clock.floor
            clock = clock.learn(value)
            assert clock.floor >= before
            if usable(value):
                learned.append(value)
        else:  # the runtime persisted the state and read it back
            clock = TrustedClock.from_json(clock.to_json())
    assert handed_out == sorted(handed_out)
    if handed_out:
        assert clock.floor >= handed_out[-1]
    assert clock.learned == max(learned, default=0.0)


@settings(max_examples=200, deadline=None)
@given(floor=st.floats(0, 4e9), learned=st.floats(0, 4e9), device=readings)
def test_now_is_the_latest_of_the_three(floor: float, learned: float, device: float) -> None:
    clock = TrustedClock(floor=floor, learned=learned)
    now, after = clock.now(device)
    assert now == max(floor, learned, device if usable(device) else 0.0)
    assert after.floor == now and after.learned == learned


def test_a_clock_set_back_keeps_the_trusted_time() -> None:
    now, clock = TrustedClock().now(1_800_000_000.0)
    back, clock = clock.now(1_000.0)  # NTP spoofed, or the RTC battery died
    assert back == now == 1_800_000_000.0
    later, clock = clock.now(1_800_000_060.0)
    assert later == 1_800_000_060.0


def test_skew_reports_a_device_clock_behind_trusted_time() -> None:
    clock = TrustedClock().learn(1_800_000_000)
    boot_1970 = clock.skew(12.0)
    assert boot_1970.exceeds and boot_1970.seconds == 1_800_000_000 - 12
    slight = clock.skew(1_800_000_000 - DEFAULT_SKEW_THRESHOLD_S)
    assert not slight.exceeds and slight.seconds == DEFAULT_SKEW_THRESHOLD_S
    just_over = clock.skew(1_800_000_000 - DEFAULT_SKEW_THRESHOLD_S - 1)
    assert just_over.exceeds
    ahead = clock.skew(1_800_900_000.0)  # time passed since the last document: not skew
    assert not ahead.exceeds and ahead.seconds == 0
    assert clock.skew(math.nan).exceeds
    assert not clock.skew(1_799_999_000.0, threshold_s=3600).exceeds


def test_skew_does_not_change_the_clock() -> None:
    clock = TrustedClock(floor=500.0, learned=400.0)
    clock.skew(100.0)
    assert clock == TrustedClock(floor=500.0, learned=400.0)


@pytest.mark.parametrize("text", ["", "{}", '{"floor": "x", "learned": 1}', '{"floor": -1, "learned": 0}',
                                  '{"floor": NaN, "learned": 0}', "[1, 2]"])
def test_unreadable_state_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="trusted clock"):
        TrustedClock.from_json(text)
