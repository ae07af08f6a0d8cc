"""Bad input at the command line: one clear message naming the thing and the fix, exit 2."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.devtools.demo import wait_for_file
from agent.devtools.mosquitto import LocalBroker
from tests.conftest import DEFAULT_MODEL, ROOT, agent_cmd, run_cli


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
    from agent.service.cli import build_parser

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
    assert out.returncode == 2 and "not a loadable TFLite model" in out.stderr


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
    time.sleep(1.0)
    pub.loop_stop()
    pub.disconnect()
    assert proc.poll() is None, "ingest died on bad input"
    proc.terminate()
    out, err = proc.communicate(timeout=15)
    stats = json.loads(out.strip().splitlines()[-1])
    assert stats["rejected"] == 5 and stats["stored"] == 0
    assert "rejected: topic lepton/v1/s1/d1/results/cam0: payload is not UTF-8 JSON" in err


def test_demo_runs_offline_without_mosquitto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.devtools import demo

    monkeypatch.setattr(demo, "find_mosquitto", lambda: None)
    assert demo.run_demo(frames=10, workdir=tmp_path, model=DEFAULT_MODEL) == 0
