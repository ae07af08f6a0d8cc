"""Diagnostics: checks with timeouts, exit codes, the kernels check."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from agent.diag import CheckResult, exit_code, render, run_checks
from tests.conftest import run_cli


def test_hung_check_fails_and_others_still_run() -> None:
    release = threading.Event()
    finished = threading.Event()

    def hangs() -> CheckResult:
        release.wait(60)  # hung until the test lets it go (or a minute: a hang guard)
        finished.set()
        return CheckResult("slow", "pass", "never seen")

    def fine() -> CheckResult:
        return CheckResult("fine", "pass", "ok")

    def broken() -> CheckResult:
        raise RuntimeError("boom")

    results = run_checks({"slow": hangs, "fine": fine, "broken": broken}, timeout_s=0.3)
    assert not finished.is_set()  # run_checks returned without waiting for the hung check
    release.set()
    assert [r.status for r in results] == ["fail", "pass", "fail"]
    assert "did not finish" in results[0].reason and "boom" in results[2].reason
    assert exit_code(results) == 2
    assert "fix:" in render(results)


def test_exit_codes() -> None:
    assert exit_code([CheckResult("a", "pass", "")]) == 0
    assert exit_code([CheckResult("a", "pass", ""), CheckResult("b", "warn", "")]) == 1


def test_diag_kernels_cli() -> None:
    out = run_cli("diag", "kernels", "--json")
    data = json.loads(out.stdout)
    check = data["checks"][0]
    assert out.returncode == 0 and check["status"] == "pass" and check["details"]["failed"] == []
    assert check["details"]["variant"] in ("portable", "avx2", "neon", "cuda")
    fallback = run_cli("diag", "kernels", env={**os.environ, "LEPTON_KERNELS": "numpy"})
    assert fallback.returncode == 1 and "[WARN] kernels" in fallback.stdout
    bad = run_cli("diag", "nonsense")
    assert bad.returncode == 2 and "choose from" in bad.stderr


# -- defect 15: a config that does not load, a board without sensors, the bundle's exit code ----

def _bad_config(tmp_path: Path) -> Path:
    bad = tmp_path / "bad.toml"
    bad.write_text("[agent]\nbogus = 1\n")
    return bad


def test_diag_with_a_broken_config_runs_nothing_on_defaults(tmp_path: Path) -> None:
    config_free = ("kernels", "clock", "memory")  # read nothing from the config
    bad = _bad_config(tmp_path)
    out = run_cli("diag", "--config", str(bad), "--json", "--timeout", "60")
    report = json.loads(out.stdout)
    by_name = {c["name"]: c for c in report["checks"]}
    assert out.returncode == report["exit_code"] == 2
    assert by_name["config"]["status"] == "fail"
    assert f"{bad}:2 [agent.bogus]: unknown key" in by_name["config"]["reason"]
    for name, check in by_name.items():
        if name not in ("config", *config_free):
            assert check["status"] == "skip" and "config" in check["reason"], check
    assert set(config_free) <= set(by_name) and "broker" in by_name
    text = run_cli("diag", "broker", "--config", str(bad))
    assert text.returncode == 2, text.stdout
    assert text.stdout.splitlines()[0].startswith(f"[FAIL] config: {bad}:2")
    assert "[SKIP] broker: not run" in text.stdout and "PASS" not in text.stdout


def test_no_thermal_sensor_is_a_skip_and_changes_no_exit_code(tmp_path: Path) -> None:
    from agent.config import load_config
    from agent.diag.checks import check_temperature

    result = check_temperature(load_config(overrides={"thermal": {"sysfs": str(tmp_path)}}))
    assert result.status == "skip" and str(tmp_path) in result.reason
    assert exit_code([CheckResult("a", "pass", ""), result]) == 0
    assert render([result]) == f"[SKIP] temperature: {result.reason}"
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[thermal]\nsysfs = "{tmp_path}"\n')
    out = run_cli("diag", "temperature", "kernels", "--config", str(cfg))
    assert out.returncode == 0 and "[SKIP] temperature" in out.stdout, out.stdout


def test_diag_bundle_exits_0_once_written_and_reports_the_checks(tmp_path: Path) -> None:
    import tarfile

    bad = _bad_config(tmp_path)
    path = tmp_path / "out" / "bundle.tar.gz"
    out = run_cli("diag", "bundle", "--config", str(bad), "--output", str(path), "--timeout", "60")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"wrote {path} (secrets removed); checks: " in out.stdout
    assert "1 fail" in out.stdout and "see diag.json in the bundle" in out.stdout
    with tarfile.open(path) as tar:
        diag = next(m for m in tar.getmembers() if m.name.endswith("/diag.json"))
        report = json.loads(tar.extractfile(diag).read())  # type: ignore[union-attr]
        texts = {Path(m.name).name: tar.extractfile(m).read().decode()  # type: ignore[union-attr]
                 for m in tar.getmembers()}
    assert report["exit_code"] == 2 and report["checks"][0]["status"] == "fail"
    assert "unknown key" in json.loads(texts["config.json"])["error"]  # not the defaults
    assert texts["config-file.toml"] == bad.read_text()
    unwritable = run_cli("diag", "bundle", "--output", "/proc/nope/bundle.tar.gz")
    assert unwritable.returncode == 2
    assert "cannot write the bundle /proc/nope/bundle.tar.gz" in unwritable.stderr


# -- issue 18 item 5: clock skew behind trusted time -------------------------------------------

def _trusted_clock_state(tmp_path: Path, learned: float) -> Path:
    """A state dir whose outbox holds a trusted clock that learned ``learned`` from a signed
    document (as the OTA runtime commits it)."""
    from agent.core.ota.clock import TrustedClock
    from agent.storage.outbox import Outbox

    state = tmp_path / "state"
    state.mkdir()
    outbox = Outbox(state / "outbox.db")
    outbox.append([], state={"ota/clock": TrustedClock().learn(learned).to_json()})
    outbox.close()
    return state


def test_diag_clock_reports_skew_behind_trusted_time(tmp_path: Path) -> None:
    import time

    from agent.config import AgentConfig
    from agent.diag.checks import check_clock

    state = _trusted_clock_state(tmp_path, time.time() + 3600)  # a signed doc from 1 h ahead
    cfg = AgentConfig.model_validate({"agent": {"state_dir": str(state)},
                                      "ota": {"clock_skew_threshold_s": 600}})
    result = check_clock(cfg)
    assert result.status == "fail", result
    assert "behind trusted time" in result.reason and result.fix and "NTP" in result.fix
    assert result.details is not None and 3590 < result.details["skew_s"] < 3610
    assert result.details["threshold_s"] == 600
    # the same skew under a larger threshold is not reported
    wide = cfg.model_copy(update={"ota": cfg.ota.model_copy(
        update={"clock_skew_threshold_s": 7200})})
    assert "behind trusted time" not in check_clock(wide).reason


def test_diag_clock_without_a_signed_document_says_nothing_of_skew(tmp_path: Path) -> None:
    import time

    from agent.config import AgentConfig
    from agent.diag.checks import check_clock

    for state in (tmp_path / "none", _trusted_clock_state(tmp_path, time.time() - 60)):
        cfg = AgentConfig.model_validate({"agent": {"state_dir": str(state)}})
        result = check_clock(cfg)
        assert result.status != "fail" and "behind" not in result.reason, result
