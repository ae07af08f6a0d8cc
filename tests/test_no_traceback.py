"""No traceback reaches a user: every command and subcommand, given bad input, ends with one line
naming what is wrong (exit 2), or naming the unexpected exception and the debug log that holds its
traceback (exit 1). Real processes; bad input fails early, so each case is fast."""

from __future__ import annotations

import logging
import os
import re
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from tests.conftest import ROOT, agent_cmd, run_cli

# {tmp}: the test's directory; {bad}: a config with a wrong type; {garbage}: bytes, not text.
CASES: list[list[str]] = [
    [],
    ["nonsense"],
    # run
    ["run", "--offline", "--max-frames", "1", "--config", "{tmp}/missing.toml"],
    ["run", "--offline", "--max-frames", "1", "--config", "{bad}"],
    ["run", "--offline", "--max-frames", "1", "--config", "{garbage}"],
    ["run", "--offline", "--max-frames", "1", "--config", "{tmp}"],
    ["run", "--offline", "--max-frames", "1", "--state-dir", "/proc/nope"],
    ["run", "--offline", "--max-frames", "1", "--state-dir", "{garbage}"],
    ["run", "--max-frames", "1", "--broker", "http://host:1883"],
    ["run", "--max-frames", "1", "--broker", "mqtt://[::1"],
    ["run", "--max-frames", "1", "--broker", "mqtt://user:secret-pw@host:1883"],
    ["run", "--offline", "--max-frames", "1", "--source", "{tmp}/missing.mp4"],
    ["run", "--offline", "--max-frames", "1", "--source", "synthetic://0x0@0"],
    ["run", "--offline", "--max-frames", "1", "--model", "{tmp}"],
    ["run", "--offline", "--max-frames", "1", "--model", "{garbage}"],
    ["run", "--offline", "--max-frames", "1", "--labels", "{tmp}/missing.txt"],
    ["run", "--offline", "--max-frames", "1", "--sensor", "serial://"],
    ["run", "--offline", "--max-frames", "-3"],
    ["run", "--max-frames", "many"],
    ["run", "--offline", "--board", "../../etc/passwd"],
    ["run", "--offline", "--device-id", "a/#"],
    # config check
    ["config"],
    ["config", "check", "{tmp}/missing.toml"],
    ["config", "check", "{tmp}"],
    ["config", "check", "{bad}"],
    ["config", "check", "{garbage}"],
    ["config", "check", "{bad}", "--board", "amiga"],
    # models inspect
    ["models", "inspect", "{tmp}/missing.tflite"],
    ["models", "inspect", "{garbage}"],
    ["models", "inspect", "{tmp}"],
    ["models", "inspect", "{garbage}", "--delegate", "gpu"],
    # ingest
    ["ingest"],
    ["ingest", "--broker", "nope", "--db", "sqlite:///{tmp}/x.db"],
    ["ingest", "--broker", "mqtt://[::1", "--db", "sqlite:///{tmp}/x.db"],
    ["ingest", "--broker", "mqtt://127.0.0.1:1", "--db", "mysql://x"],
    ["ingest", "--broker", "mqtt://127.0.0.1:1", "--db", "sqlite:///{tmp}"],
    ["ingest", "--broker", "mqtt://127.0.0.1:1", "--db", "sqlite:///x", "--reconnect-max", "x"],
    # demo
    ["demo", "--frames", "-1"],
    ["demo", "--frames", "2", "--workdir", "/proc/nope"],
    # status
    ["status", "--config", "{tmp}/missing.toml"],
    ["status", "--config", "{bad}"],
    ["status", "--json", "--socket"],
    # diag
    ["diag", "nonsense"],
    ["diag", "--timeout", "-1"],
    ["diag", "--config", "{bad}", "kernels"],
    ["diag", "bundle", "--config", "{bad}", "--output", "/proc/nope/bundle.tar.gz"],
    # bench
    ["bench"],
    ["bench", "nothing"],
    ["bench", "pipeline", "--model", "{tmp}/missing.tflite"],
    ["bench", "pipeline", "--source", "{tmp}/missing.mp4"],
    ["bench", "pipeline", "--seconds", "0"],
    ["bench", "kernels", "--rounds", "0"],
    ["bench", "kernels", "--opencv-threads", "-1"],
    ["bench", "sync", "--messages", "0"],
    ["bench", "sync", "--live-hz", "inf"],
    # faults
    ["faults", "meteor"],
    ["faults", "--cycles", "0"],
    ["faults", "--outage-s", "nan"],
    # synth-clip
    ["synth-clip"],
    ["synth-clip", "{tmp}/nodir/clip.avi"],
    ["synth-clip", "{tmp}/clip.gif"],
    ["synth-clip", "{tmp}", "--frames", "1"],
    ["synth-clip", "{tmp}/clip.avi", "--size", "axb"],
    ["synth-clip", "{tmp}/clip.avi", "--frames", "-1"],
]


def check_one_line_failure(out: subprocess.CompletedProcess[str]) -> None:
    """Exit 1 or 2, no traceback, and exactly one line that says what went wrong."""
    text = out.stdout + out.stderr
    assert "Traceback" not in text, text
    assert out.returncode in (1, 2), (out.returncode, text)
    errors = [line for line in out.stderr.splitlines()
              if line.startswith("lepton-agent") and "error" in line]
    if not errors:  # diag reports in its own format, on stdout
        errors = [line for line in out.stdout.splitlines() if line.startswith("[FAIL] ")]
    assert len(errors) == 1, text
    if out.returncode == 1:
        assert "internal error in" in errors[0] and "full traceback in " in errors[0]


@pytest.mark.parametrize("argv", CASES, ids=lambda a: " ".join(a)[:60] or "(none)")
def test_bad_input_never_shows_a_traceback(tmp_path: Path, argv: list[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[agent]\nshutdown_grace_s = true\n")
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(bytes(range(256)) * 4)
    args = [a.format(tmp=tmp_path, bad=bad, garbage=garbage) for a in argv]
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state-home")}
    env.pop("LOGS_DIRECTORY", None)
    out = subprocess.run(agent_cmd(*args), capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=120, stdin=subprocess.DEVNULL)
    check_one_line_failure(out)
    assert "secret-pw" not in out.stdout + out.stderr


# -- the top-level handler itself ------------------------------------------------------------------

@pytest.fixture
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    monkeypatch.delenv("LOGS_DIRECTORY", raising=False)
    return tmp_path / "lepton-agent"


def _logged_path(line: str) -> Path:
    found = re.search(r"full traceback in (\S+?);", line)
    assert found, line
    return Path(found.group(1))


def test_an_unexpected_exception_is_one_line_and_a_private_debug_log(
        state_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from agent import cli

    def broken(args: object) -> int:
        raise KeyError("stages")

    monkeypatch.setattr(cli.status, "cmd_status", broken)
    assert cli.main(["status"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("lepton-agent: internal error in status: KeyError: 'stages' (full "
                          f"traceback in {state_home}/lepton-agent-crash-")
    log = _logged_path(err)
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and 'raise KeyError("stages")' in text


def test_the_line_masks_url_passwords_and_drops_embedded_tracebacks(
        state_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from agent import cli

    def broken(args: object) -> int:
        raise RuntimeError("child failed for mqtt://cam:hunter22@host:8883:\nTraceback (most "
                           "recent call last):\n  File x\nValueError: y")

    monkeypatch.setattr(cli.synth_clip, "cmd_synth_clip", broken)
    assert cli.main(["synth-clip", "x.avi"]) == 1
    err = capsys.readouterr().err
    assert "RuntimeError: child failed for mqtt://cam:***@host:8883 (full traceback in" in err
    assert "hunter22" not in err and "Traceback" not in err and err.count("\n") == 1


def test_a_crashing_thread_is_one_line_too(
        state_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from agent import cli

    def with_thread(args: object) -> int:
        worker = threading.Thread(target=lambda: 1 / 0, name="capture")
        worker.start()
        worker.join()
        return 0

    monkeypatch.setattr(cli.status, "cmd_status", with_thread)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)  # restored afterwards
    assert cli.main(["status"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("lepton-agent: internal error in thread capture: ZeroDivisionError: "
                          "division by zero (full traceback in")
    assert "Traceback" not in err and "1 / 0" in _logged_path(err).read_text()


def test_a_logged_exception_shows_one_line_on_a_terminal(
        state_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent.service.logs import setup_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("info")
        try:
            {}["frames"]
        except KeyError:
            logging.getLogger("agent.capture").exception("capture thread failed")
        err = capsys.readouterr().err
        assert "capture thread failed" in err and "KeyError: 'frames' (full traceback in " in err
        assert "Traceback" not in err
        logged = re.search(r"full traceback in (\S+)\)", err)
        assert logged and "Traceback" in Path(logged.group(1)).read_text()
        setup_logging("debug")
        try:
            {}["frames"]
        except KeyError:
            logging.getLogger("agent.capture").exception("capture thread failed")
        assert "Traceback" in capsys.readouterr().err  # --log-level debug keeps the full story
    finally:
        root.handlers[:], root.level = saved[0], saved[1]


def test_demo_names_a_workdir_it_cannot_create() -> None:
    out = run_cli("demo", "--frames", "2", "--workdir", "/proc/nope")
    assert out.returncode == 2, out.stderr  # an input error, not an internal one
    assert "--workdir" in out.stderr and "/proc/nope" in out.stderr
