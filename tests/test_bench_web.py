"""`lepton-agent bench web`: the report a short real run gives (an agent, two viewer processes
on its MJPEG live view, phases in ABBA order). Figures are the bench's business; this checks
that each phase was measured and the viewers got frames, at most ``[web] live_fps`` a second."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def test_bench_web_reports_both_kinds_of_phase() -> None:
    out = run_cli("bench", "web", "--json", "--rounds", "2", "--seconds", "2", "--pace",
                  "realtime", timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout)
    assert r["rounds"] == 2 and len(r["runs_without"]) == len(r["runs_with_viewers"]) == 2
    assert all(x > 0 for x in r["runs_without"] + r["runs_with_viewers"])
    assert r["ratio"] == pytest.approx(r["fps_with_viewers"] / r["fps_without"], abs=1e-3)
    assert r["cpu_ms_per_frame_without"] > 0 and r["cpu_ms_per_frame_with_viewers"] > 0
    # two viewers a round, each counted frames (boundaries split across reads included)
    assert len(r["viewer_jpegs_per_s"]) == 4
    assert all(0 < x <= 5.0 * 1.1 for x in r["viewer_jpegs_per_s"]), r["viewer_jpegs_per_s"]
