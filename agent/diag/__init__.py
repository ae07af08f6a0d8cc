"""Diagnostics: each check returns a result with a status, a one-line reason and a one-line fix.

``skip`` means the check did not apply or could not run (no thermal sensor on a dev machine, or
a config that did not load): it says why, and it changes no exit code."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["pass", "warn", "fail", "skip"]


@dataclass
class CheckResult:
    name: str
    status: Status
    reason: str
    fix: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


Check = Callable[[], CheckResult]


def run_checks(checks: dict[str, Check], timeout_s: float = 20.0) -> list[CheckResult]:
    """Run each check in a worker thread with a timeout; a hung check fails, others go on."""
    results: list[CheckResult] = []
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="diag")
    try:
        for name, check in checks.items():
            started = time.monotonic()
            future = pool.submit(check)
            try:
                result = future.result(timeout=timeout_s)
            except concurrent.futures.TimeoutError:
                result = CheckResult(name, "fail", f"did not finish within {timeout_s:.0f}s",
                                     "look for a hung device or an unreachable host")
                pool.shutdown(wait=False, cancel_futures=True)
                pool = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                             thread_name_prefix="diag")
            except Exception as exc:
                result = CheckResult(name, "fail", f"check crashed: {exc!r}", "report this bug")
            result.seconds = round(time.monotonic() - started, 3)
            results.append(result)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return results


def exit_code(results: list[CheckResult]) -> int:
    """0 all pass (or skipped), 1 warnings, 2 failures."""
    statuses = {r.status for r in results}
    return 2 if "fail" in statuses else (1 if "warn" in statuses else 0)


def render(results: list[CheckResult]) -> str:
    marks = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "skip": "SKIP"}
    lines = []
    for r in results:
        lines.append(f"[{marks[r.status]}] {r.name}: {r.reason}")
        if r.fix and r.status in ("warn", "fail"):
            lines.append(f"       fix: {r.fix}")
    return "\n".join(lines)


def summary(results: list[CheckResult]) -> str:
    """``7 pass, 1 warn, 1 fail, 1 skip`` (only the statuses present)."""
    counts = {s: sum(r.status == s for r in results) for s in ("pass", "warn", "fail", "skip")}
    return ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no checks"
