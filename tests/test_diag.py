"""Diagnostics: checks with timeouts, exit codes, the kernels check."""

from __future__ import annotations

import json
import os
import time

from agent.diag import CheckResult, exit_code, render, run_checks
from tests.conftest import run_cli


def test_hung_check_fails_and_others_still_run() -> None:
    def hangs() -> CheckResult:
        time.sleep(5)
        return CheckResult("slow", "pass", "never seen")

    def fine() -> CheckResult:
        return CheckResult("fine", "pass", "ok")

    def broken() -> CheckResult:
        raise RuntimeError("boom")

    started = time.monotonic()
    results = run_checks({"slow": hangs, "fine": fine, "broken": broken}, timeout_s=0.3)
    assert time.monotonic() - started < 3
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
    assert check["details"]["variant"] in ("ref", "neon", "cuda")
    fallback = run_cli("diag", "kernels", env={**os.environ, "LEPTON_KERNELS": "numpy"})
    assert fallback.returncode == 1 and "[WARN] kernels" in fallback.stdout
    bad = run_cli("diag", "nonsense")
    assert bad.returncode == 2 and "choose from" in bad.stderr
