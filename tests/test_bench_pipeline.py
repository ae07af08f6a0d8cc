"""`lepton-agent bench pipeline --streams N --json`: a short smoke of the report's shape and its
internal consistency (figures, not goals: the goals are for the full run, docs/benchmarks.md)."""

from __future__ import annotations

import json

import pytest

from agent.devtools.mosquitto import find_mosquitto
from tests.conftest import run_cli

pytestmark = [pytest.mark.broker,
              pytest.mark.skipif(find_mosquitto() is None, reason="needs mosquitto")]


@pytest.mark.slow  # whole runs of real processes: the default tier stays under 15 min
def test_two_stream_report_shape() -> None:
    """One short round, two streams: every key of the multi-stream report, each consistent with
    the others (the aggregate is the sum of the streams, the ratios are the figures')."""
    out = run_cli("bench", "pipeline", "--streams", "2", "--seconds", "0.3", "--rounds", "1",
                  "--threads", "1", "--thread-budget", "2", "--json", timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    print(json.dumps(report))  # shown when an assertion below fails
    assert report["streams"] == 2 and report["threads_per_stream"] == 1
    assert report["thread_budget"] == 2
    per_stream = report["per_stream_fps"]
    assert len(per_stream) == 2 and all(f > 0 for f in per_stream)
    assert report["aggregate_fps"] == pytest.approx(sum(per_stream), abs=0.02)
    assert report["stream_states"] == ["finished"]
    assert len(report["stream_frames"]) == 2 and len(set(report["stream_frames"])) == 1
    raw = report["raw_invoke_fps"]
    assert raw > 0
    # Rounded to 3 decimals: the default model's ratio is ~0.05, so the tolerance is absolute.
    assert report["aggregate_vs_raw"] == pytest.approx(report["aggregate_fps"] / raw, abs=0.0011)
    fair = sum(per_stream) / 2  # one round: its streams' own share
    assert report["min_stream_vs_fair_share"] == pytest.approx(min(per_stream) / fair, abs=0.01)
    assert report["fair_share"] == (min(per_stream) >= 0.8 * fair)
    assert report["rss_mb"] > 0 and report["rss_mb_single"] > 0
    assert report["rss_vs_single"] == pytest.approx(report["rss_mb"] / report["rss_mb_single"],
                                                    rel=0.01)
    # The single-stream (P1) figures stay in the report, and where the CPU goes.
    for key in ("peer_fps", "agent_fps", "agent_vs_peer", "agent_vs_raw", "first_result_s",
                "raw_cpu_ms_per_frame", "agent_cpu_ms_per_frame", "streams_cpu_ms_per_frame",
                "agent_cpu_cores_used", "streams_cpu_cores_used"):
        assert report[key] > 0, key
    assert report["observed_fps"] is None or report["observed_fps"] > 0


def test_threads_over_the_budget_is_one_clear_line() -> None:
    out = run_cli("bench", "pipeline", "--streams", "2", "--threads", "3", "--thread-budget", "2")
    assert out.returncode != 0
    assert "--thread-budget" in out.stderr and "Traceback" not in out.stderr
