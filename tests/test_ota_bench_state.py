"""`bench ota` reports its figures (and refuses bad input in one line), and the device side of
OTA starts whatever its persisted state holds: an unreadable deployment record is ignored,
unreadable anti-rollback counters refuse every deployment with the reason."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from agent.backend.deploy import Bundle
from agent.ota.bundles import sign
from agent.storage.outbox import Outbox
from tests.conftest import DEFAULT_MODEL, run_cli
from tests.test_ota_device import Fleet


def test_bench_ota_reports_the_swap_and_refuses_a_missing_model() -> None:
    out = run_cli("bench", "ota", "--seconds", "3", "--commands", "0", "--json", timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["frames_read"] == 45 and report["results_by_new_model"] > 0
    assert report["frames_lost"] == report["frames_read"] - report["results"]
    assert 0 < report["swap_gap_ms"] < 1000 and report["frame_interval_ms"] == 66.67
    # the swap gap apart from the run's typical gap and from its two frames' capture gap
    assert abs(report["swap_gap_minus_median_ms"]
               - (report["swap_gap_ms"] - report["median_gap_ms"])) <= 0.02
    assert isinstance(report["swap_added_ms"], float) and report["max_added_ms_steady"] is not None
    assert report["invoke_ms_old_median"] > 0 and len(report["invoke_ms_new_first"]) == 3
    bad = run_cli("bench", "ota", "--model", "/no/such/model", "--commands", "0")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "/no/such/model" in bad.stderr and "Traceback" not in bad.stderr


def test_unreadable_ota_state_is_ignored_or_refuses_deployments(broker, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    box = Outbox(state / "outbox.db")
    box.append([], state={"ota/deployment": "{not json", "ota/counters": "[1, 2]"})
    box.close()
    fleet = Fleet(tmp_path, broker)  # starts although both are unreadable
    try:
        assert "last deployment's record (ota/deployment) is unreadable" in fleet.proc.log
        folder = tmp_path / "b"
        shutil.copytree(DEFAULT_MODEL, folder)
        sign(folder, fleet.keys.private, version=2, now=time.time())
        bundle = Bundle.read(folder)
        reply = fleet.send("deploy-model", bundle.deploy_args("after-damage"), 30)
        assert reply is not None and not reply.ok
        assert reply.reason.startswith("rejected [state]: the anti-rollback counters"), reply
    finally:
        fleet.close()
    assert "Traceback" not in fleet.proc.log
