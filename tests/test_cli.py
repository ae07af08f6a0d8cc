"""Bad input at the command line: one clear message naming the thing and the fix, exit 2."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.devtools.demo import wait_for_file
from agent.devtools.mosquitto import LocalBroker
from tests.conftest import DEFAULT_MODEL, ROOT, agent_cmd, run_cli
from tests.e2e import wait_for


@pytest.mark.parametrize(("args", "expect"), [
    (["--source", "synthetic://10x10@5"], "--source"),
    (["--source", "ftp://cam/x"], "unknown source scheme"),
    (["--broker", "tcp://h:1"], "mqtt:// or mqtts://"),
    (["--broker", "mqtt://user:pw@h:1"], "CREDENTIALS_DIRECTORY"),
    (["--board", "amiga"], "unknown board"),
    (["--device-id", "a/b"], "not a valid topic segment"),
    (["--model", "/nonexistent/model.tflite"], "does not exist"),
    (["--source", "/nonexistent/clip.mp4"], "no such file"),
    (["--threads", "0"], "--threads"),
])
def test_run_rejects_bad_arguments(tmp_path: Path, args: list[str], expect: str) -> None:
    offline = [] if "--broker" in args else ["--offline"]
    out = run_cli("run", *offline, "--state-dir", str(tmp_path), "--max-frames", "1", *args)
    assert out.returncode == 2, out.stderr
    assert expect in out.stderr
    assert out.stderr.count("\n") <= 2 and "Traceback" not in out.stderr


def test_argparse_errors_exit_2() -> None:
    out = run_cli("run", "--max-frames", "many")
    assert out.returncode == 2 and "invalid int value" in out.stderr
    out = run_cli("run", "--offline", "--broker", "mqtt://127.0.0.1:1")
    assert out.returncode == 2 and "--offline and --broker exclude each other" in out.stderr


def test_faults_scenarios_default_to_all_and_unknown_ones_are_named() -> None:
    from agent.cli import build_parser

    assert build_parser().parse_args(["faults", "--cycles", "1"]).scenario == []
    out = run_cli("faults", "broker-kill", "meteor")
    assert out.returncode == 2
    assert "'meteor'" in out.stderr and "broker-kill, agent-kill, budget, outage" in out.stderr


def test_corrupt_video_file_is_named(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00" * 4096)
    out = run_cli("run", "--offline", "--state-dir", str(tmp_path), "--source", str(clip))
    assert out.returncode == 2 and f"source {clip}: cannot open" in out.stderr


def test_offline_run_keeps_results_for_later(tmp_path: Path) -> None:
    out = run_cli("run", "--offline", "--state-dir", str(tmp_path), "--source",
                  "synthetic://160x120@10", "--pace", "fast", "--max-frames", "12")
    assert out.returncode == 0, out.stderr
    assert "12 waiting in the outbox for the next start" in out.stdout


def test_models_inspect_bad_file(tmp_path: Path) -> None:
    bogus = tmp_path / "m.tflite"
    bogus.write_text("hello")
    out = run_cli("models", "inspect", str(bogus))
    assert out.returncode == 2 and "not a TFLite model: 5 bytes, too short" in out.stderr


@pytest.mark.broker
def test_ingest_survives_malformed_payloads(tmp_path: Path, broker: LocalBroker) -> None:
    db = tmp_path / "ingest.db"
    ready = tmp_path / "ready"
    proc = subprocess.Popen(agent_cmd("ingest", "--broker", broker.url, "--db", f"sqlite:///{db}",
                                      "--client-id", "ingest-bad", "--ready-file", str(ready)),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_file(ready, proc, timeout=30)
    pub = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    topic = "lepton/v1/s1/d1/results/cam0"
    for payload in (b"\xff\xfe garbage", b"{}", b'{"schema": 1}', b"[1, 2]", b"x" * 2_000_000):
        pub.publish(topic, payload, qos=1).wait_for_publish(5)

    def rejects() -> int:
        if not db.exists():
            return 0
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            try:
                return int(conn.execute("SELECT count(*) FROM rejects").fetchone()[0])
            except sqlite3.OperationalError:
                return 0

    wait_for(lambda: rejects() == 5 or proc.poll() is not None, "ingest to reject all five")
    pub.loop_stop()
    pub.disconnect()
    assert proc.poll() is None, "ingest died on bad input"
    proc.terminate()
    out, err = proc.communicate(timeout=15)
    stats = json.loads(out.strip().splitlines()[-1])
    assert stats["rejected"] == 5 and stats["stored"] == 0
    assert "rejected (not_utf8): topic lepton/v1/s1/d1/results/cam0: payload is not UTF-8" in err


def test_demo_runs_offline_without_mosquitto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.devtools import demo

    monkeypatch.setattr(demo, "find_mosquitto", lambda: None)
    assert demo.run_demo(frames=10, workdir=tmp_path, model=DEFAULT_MODEL) == 0


# -- status (defect 14) -------------------------------------------------------------------------

UNIT = ROOT / "systemd" / "lepton-agent.service"
REPRS = ("None", "{", "}", "'", "True", "False")


def _unit_setting(name: str) -> str:
    found = re.search(rf"^{name}=(\S+)$", UNIT.read_text(), re.MULTILINE)
    assert found, f"{name}= missing from {UNIT}"
    return found.group(1)


def test_status_looks_where_the_unit_puts_the_socket_and_the_outbox(tmp_path: Path) -> None:
    from agent.service.status import SYSTEMD_RUNTIME_DIR, SYSTEMD_STATE_DIR, socket_candidates

    assert Path("/run") / _unit_setting("RuntimeDirectory") == SYSTEMD_RUNTIME_DIR
    assert Path("/var/lib") / _unit_setting("StateDirectory") == SYSTEMD_STATE_DIR
    from agent.storage.volatile import volatile_dir

    # Last: where an agent whose state directory cannot be written runs (a volatile outbox).
    assert socket_candidates(tmp_path) == [tmp_path / "agent.sock",
                                           SYSTEMD_RUNTIME_DIR / "status.sock",
                                           volatile_dir(tmp_path) / "agent.sock"]
    assert socket_candidates(tmp_path, tmp_path / "x.sock") == [tmp_path / "x.sock"]


def _wait_for_socket(path: Path, proc: subprocess.Popen[str]) -> dict:
    from agent.service.status import query

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        snap = query(path)
        if snap and snap["stages"]["inference"]["frames"] > 2:
            return snap
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.1)
    raise AssertionError(f"the agent did not answer on {path}")


def test_status_finds_a_service_agent_without_flags_and_prints_words(tmp_path: Path) -> None:
    """An agent started as the unit starts it (RUNTIME_DIRECTORY=/run/lepton-agent) is found by a
    plain `lepton-agent status` from a shell, whose environment has no RUNTIME_DIRECTORY."""
    run_dir = Path("/run") / _unit_setting("RuntimeDirectory")
    if run_dir.exists() or not os.access(run_dir.parent, os.W_OK):
        pytest.skip(f"needs to create {run_dir} (root, and no agent service here)")
    run_dir.mkdir()
    env = {**os.environ, "RUNTIME_DIRECTORY": str(run_dir)}
    shell_env = {k: v for k, v in os.environ.items() if k != "RUNTIME_DIRECTORY"}
    proc = subprocess.Popen(agent_cmd("run", "--offline", "--state-dir", str(tmp_path / "state"),
                                      "--source", "synthetic://160x120@20", "--model",
                                      str(DEFAULT_MODEL)),
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        _wait_for_socket(run_dir / "status.sock", proc)
        out = subprocess.run(agent_cmd("status"), capture_output=True, text=True, cwd=ROOT,
                             env=shell_env, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"(pid {proc.pid}," in out.stdout
        assert "broker:    none (offline)" in out.stdout
        assert re.search(r"thermal:   (no sensor|\d+\.\d C)", out.stdout), out.stdout
        assert not [r for r in REPRS if r in out.stdout], out.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        shutil.rmtree(run_dir, ignore_errors=True)


def _outbox(state: Path, sent: int, unsent: int) -> None:
    from agent.storage.outbox import Outbox, PendingRecord

    box = Outbox(state / "outbox.db")
    try:
        stored = box.append([PendingRecord("cam0", "t/cam0", lambda seq: b"{}")
                             for _ in range(sent + unsent)])
        box.append([PendingRecord("mic", "t/mic", lambda seq: b"{}")])
        box.mark_sent(r.id for r in stored[:sent])
    finally:
        box.close()


def test_status_of_a_stopped_agent_reads_its_outbox_as_text(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    _outbox(state, sent=3, unsent=2)
    out = run_cli("status", "--state-dir", str(state))
    assert out.returncode == 3, out.stderr
    assert "backlog 6 records" in out.stdout and "(until ingested)" in out.stdout
    assert "last seq:  cam0 5, mic 1" in out.stdout
    assert not [r for r in REPRS if r in out.stdout], out.stdout
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\nstate_dir = "{state}"\n[outbox]\ndelivery = "broker"\n')
    out = run_cli("status", "--config", str(cfg), "--json")
    data = json.loads(out.stdout)
    assert out.returncode == 3 and data["backlog"] == 3 and data["delivery"] == "broker"
    assert data["last_seq"] == {"cam0": 5, "mic": 1}


@pytest.mark.parametrize("args", [["status", "--config", "CONFIG"],
                                  ["config", "check", "-v", "CONFIG"]])
def test_output_into_a_reader_that_left_ends_quietly(tmp_path: Path, args: list[str]) -> None:
    """`lepton-agent status | head -0`: the reader is gone before the first write."""
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\nstate_dir = "{tmp_path}"\n')
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        out = subprocess.run(agent_cmd(*[str(cfg) if a == "CONFIG" else a for a in args]),
                             stdout=write_end, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                             timeout=60)
    finally:
        os.close(write_end)
    assert out.stderr == "" and out.returncode == 141  # as if killed by SIGPIPE, like cat or seq


# -- synth-clip (defect 16) ---------------------------------------------------------------------

@pytest.mark.parametrize(("name", "extra", "expect"), [
    ("missing/clip.avi", [], "directory {tmp}/missing does not exist"),
    ("clip.mkv", [], "unknown video extension '.mkv'"),
    ("clip", [], "supported: .avi, .mp4"),
    ("clip.avi", ["--frames", "-1"], "argument --frames: '-1' must be above zero"),
    ("clip.avi", ["--frames", "0"], "argument --frames: '0' must be above zero"),
    ("clip.avi", ["--fps", "nan"], "argument --fps"),
    ("clip.avi", ["--size", "0x0"], "size 0x0 out of range"),
    ("clip.avi", ["--seed", "-2"], "argument --seed"),
])
def test_synth_clip_refuses_bad_output_and_counts(tmp_path: Path, name: str, extra: list[str],
                                                   expect: str) -> None:
    out = run_cli("synth-clip", str(tmp_path / name), "--frames", "2", *extra)
    assert out.returncode == 2, out.stdout + out.stderr
    assert expect.format(tmp=tmp_path) in out.stderr
    assert "Traceback" not in out.stderr and "wrote" not in out.stdout
    assert not list(tmp_path.iterdir())


def test_synth_clip_writes_what_it_says(tmp_path: Path) -> None:
    import cv2

    for name in ("clip.avi", "clip.MP4"):
        out = run_cli("synth-clip", str(tmp_path / name), "--frames", "3", "--size", "64x48")
        assert out.returncode == 0 and f"wrote 3 frames of 64x48 to {tmp_path / name}" in out.stdout
        cap = cv2.VideoCapture(str(tmp_path / name))
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
        cap.release()


# -- README usage (defect 17) -------------------------------------------------------------------

def _run_options() -> set[str]:
    from agent.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {s for a in sub.choices["run"]._actions for s in a.option_strings
            if s.startswith("--") and s != "--help"}


def test_readme_usage_lists_every_run_option() -> None:
    block = re.search(r"```sh\n(lepton-agent run .*?)```", (ROOT / "README.md").read_text(),
                      re.DOTALL)
    assert block, "README.md has no `lepton-agent run` usage block"
    documented = set(re.findall(r"\[(--[a-z-]+)", block.group(1)))
    assert documented == _run_options(), (f"missing from README: {_run_options() - documented}; "
                                          f"not an option: {documented - _run_options()}")


# What `run` must leave unloaded: the device runtime is agent.service, and every command imports
# its own needs inside its function, so a module-level import in agent/cli/ would show up here.
NOT_FOR_THE_DEVICE = ("agent.backend", "agent.bench", "agent.devtools", "agent.diag")
LOADED_AFTER_MAIN = """
import json, sys
from agent.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(m for m in sys.modules if m.startswith("agent"))}),
      file=sys.stderr)
"""


@pytest.mark.parametrize("argv", [["run", "--help"], ["run", "--offline", "--max-frames", "2"]],
                         ids=["help", "offline-run"])
def test_run_loads_no_backend_bench_devtools_or_diag(tmp_path: Path, argv: list[str]) -> None:
    out = subprocess.run([sys.executable, "-c", LOADED_AFTER_MAIN, *argv,
                          *(["--state-dir", str(tmp_path)] if "--offline" in argv else [])],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    report = json.loads(out.stderr.strip().splitlines()[-1])
    assert report["code"] == 0, out.stderr
    assert "agent.service.app" in report["modules"] or "--help" in argv
    loaded = [m for m in report["modules"]
              if any(m == p or m.startswith(p + ".") for p in NOT_FOR_THE_DEVICE)]
    assert not loaded, f"`lepton-agent {' '.join(argv)}` imported {loaded}"
