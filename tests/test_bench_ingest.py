"""`bench ingest` on a small run: every figure present and consistent, the overload run loses
nothing, and the CLI speaks one JSON line or one error line."""

from __future__ import annotations

import json

import pytest

from agent.bench.ingest import bench_ingest, make_messages
from tests.conftest import run_cli


def test_messages_are_valid_records_of_many_devices() -> None:
    from agent.backend.ingest import RecordValidator

    messages = make_messages(200, devices=10)
    validator = RecordValidator()
    records = [validator.validate(t, p) for t, p in messages]
    assert len({(r.device, r.seq) for r in records}) == 200
    assert len({r.device for r in records}) == 10


@pytest.mark.slow
def test_a_small_run_reports_every_figure_and_loses_nothing() -> None:
    report = bench_ingest(records=600, processes=2, overload=0.2, seconds=3.0, rounds=1)
    for key in ("raw_subscriber_per_s", "sqlite_per_s", "postgresql_per_s"):
        assert report[key] and report[key] > 0, key
    assert report["sqlite_ratio"] == round(report["sqlite_per_s"] /
                                           report["raw_subscriber_per_s"], 3)
    scale = report["processes"]
    assert scale["n"] == 2 and scale["one_per_s"] > 0 and scale["n_per_s"] > 0
    over = report["overload"]
    assert over["offered"] > 0 and over["stored"] == over["offered"]
    assert over["lost"] == 0 and over["duplicates_stored"] == 0 and over["pending"] == 0
    assert over["catch_up_s"] is not None


def test_cli_refuses_bad_flags_in_one_line() -> None:
    out = run_cli("bench", "ingest", "--records", "0", "--json")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--records" in out.stderr


@pytest.mark.slow  # whole runs of real processes: the default tier stays under 15 min
def test_cli_prints_one_json_object() -> None:
    out = run_cli("bench", "ingest", "--records", "300", "--pg", "postgresql://x@127.0.0.1:1/x",
                  "--json", timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["records"] == 300 and report["sqlite_per_s"] > 0
    assert report["postgresql_per_s"] is None and "no server" in report["postgresql"]
