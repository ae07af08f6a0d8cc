"""On the device: status socket, Prometheus endpoint, thermal slow-down, stale sockets."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from agent.devtools.mosquitto import free_port
from agent.service.status import query
from tests.conftest import DEFAULT_MODEL, ROOT, agent_cmd, run_cli
from tests.e2e import wait_for


def start_agent(tmp_path: Path, *extra: str, config: str = "") -> subprocess.Popen[str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\nstate_dir = "{tmp_path / "state"}"\n[model]\npath = "{DEFAULT_MODEL}"\n'
                   + config)
    return subprocess.Popen(agent_cmd("run", "--config", str(cfg), "--offline", "--source",
                                      "synthetic://160x120@20", *extra),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_status(sock: Path, until: Callable[[dict], bool] | None = None,
                    what: str = "the agent's status socket with frames processed") -> dict:
    """The first snapshot with frames processed (and ``until`` true, when given)."""
    def check() -> dict | None:
        snap = query(sock)
        ok = snap and snap["stages"]["inference"]["frames"] > 5 and (until is None or until(snap))
        return snap if ok else None

    return wait_for(check, what, timeout=60, interval=0.1)


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)


def test_status_live_then_not_running(tmp_path: Path) -> None:
    proc = start_agent(tmp_path)
    sock = tmp_path / "state" / "agent.sock"
    try:
        snap = wait_for_status(sock)
        assert snap["state"] == "running" and snap["stages"]["capture"]["alive"]
        assert snap["queues"]["frames"]["policy"] == "drop_oldest"
        out = run_cli("status", "--state-dir", str(tmp_path / "state"))
        assert out.returncode == 0 and "inference: up lepton-vehicles-tiny" in out.stdout
        second = start_agent(tmp_path / "second", "--state-dir", str(tmp_path / "state"))
        _, err = second.communicate(timeout=30)
        assert second.returncode == 2 and "another agent" in err
    finally:
        stop(proc)
    assert not sock.exists()
    out = run_cli("status", "--state-dir", str(tmp_path / "state"), "--json")
    data = json.loads(out.stdout)
    assert out.returncode == 3 and data["state"] == "not running" and data["backlog"] > 0


def test_stale_socket_from_a_killed_agent_is_replaced(tmp_path: Path) -> None:
    proc = start_agent(tmp_path)
    sock = tmp_path / "state" / "agent.sock"
    wait_for_status(sock)
    proc.kill()
    proc.wait(10)
    assert sock.exists()  # left behind by SIGKILL
    assert query(sock) is None
    proc = start_agent(tmp_path)
    try:
        assert wait_for_status(sock)["pid"] == proc.pid
    finally:
        stop(proc)


def test_prometheus_endpoint_on_localhost(tmp_path: Path) -> None:
    port = free_port()
    proc = start_agent(tmp_path, config=f"[metrics]\nprometheus_port = {port}\n")
    try:
        wait_for_status(tmp_path / "state" / "agent.sock")

        def scraped() -> str | None:  # the endpoint serves a snapshot the agent refreshes
            url = f"http://127.0.0.1:{port}/metrics"
            text = urllib.request.urlopen(url, timeout=30).read().decode()
            return text if "lepton_frames_processed_total 0.0" not in text else None

        body = wait_for(scraped, "metrics with frames processed")
    finally:
        stop(proc)
    for name in ("lepton_frames_processed_total", "lepton_outbox_backlog_records",
                 "lepton_broker_connected 0.0", "lepton_thermal_level 0.0"):
        assert name in body


def test_hot_board_slows_inference_and_reports_it(tmp_path: Path) -> None:
    zone = tmp_path / "sys" / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text("90000\n")
    proc = start_agent(tmp_path, config=f'[thermal]\nsysfs = "{tmp_path / "sys"}"\npoll_s = 0.2\n'
                                        "max_level = 2\n")
    sock = tmp_path / "state" / "agent.sock"
    try:
        hot = wait_for_status(sock, lambda s: s["thermal"]["level"] == 2, "thermal level 2")
        assert hot["thermal"]["temp_c"] == 90.0
        frames_before = hot["stages"]["capture"]["frames"]
        processed_before = hot["stages"]["inference"]["frames"]
        later = wait_for_status(sock, lambda s: s["stages"]["capture"]["frames"]
                                >= frames_before + 40, "40 more frames captured")
        captured = later["stages"]["capture"]["frames"] - frames_before
        processed = later["stages"]["inference"]["frames"] - processed_before
        assert processed <= captured / 4 + 2  # level 2: one frame in four
        assert later["thermal"]["level"] == 2
        (zone / "temp").write_text("50000\n")
        wait_for_status(sock, lambda s: s["thermal"]["level"] == 0, "thermal level back to 0")
    finally:
        stop(proc)


def test_watchdog_health_detects_a_stuck_stage() -> None:
    from types import SimpleNamespace

    from agent.service.pipelines import StageWatch

    frames: list[int] = []
    inference = SimpleNamespace(stats=SimpleNamespace(frames=0))
    capture = SimpleNamespace(alive=True, stats=SimpleNamespace(ended=False),
                              blocked_for=lambda now: 0.0, busy_with="")
    watch = StageWatch("src", capture, inference, frames)  # type: ignore[arg-type]

    class Check:
        @staticmethod
        def healthy(stall_s: float, now: float) -> bool:
            return not watch.problems(stall_s, now)

    h = Check()
    assert h.healthy(10, now=100.0)
    frames.append(1)  # a frame waits ...
    assert h.healthy(10, now=105.0)
    assert not h.healthy(10, now=111.0)  # ... and inference has not moved for over 10 s
    inference.stats.frames = 1
    assert h.healthy(10, now=112.0)  # progress: healthy again
    capture.alive = False
    assert not h.healthy(10, now=113.0)  # capture thread died without ending
    capture.stats.ended = True
    assert h.healthy(10, now=114.0)  # a finished source is not a stuck one


def test_a_broker_url_with_a_password_is_refused_without_showing_it(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[mqtt]\nbroker = "mqtt://cam:s3cr3t-Pa55@broker.example:1883"\n')
    for args in (["run", "--broker", "mqtts://cam:s3cr3t-Pa55@broker.example",
                  "--state-dir", str(tmp_path / "state")],
                 ["config", "check", str(cfg)],
                 ["ingest", "--broker", "mqtt://cam:s3cr3t-Pa55@broker.example",
                  "--db", f"sqlite:///{tmp_path / 'i.db'}"]):
        out = run_cli(*args)
        assert out.returncode == 2, out.stderr
        assert "carries credentials" in out.stderr and "cam:***@broker.example" in out.stderr
        assert "s3cr3t" not in out.stderr + out.stdout


def test_metrics_port_in_use_is_a_warning_and_the_agent_runs_on(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = start_agent(tmp_path, config=f"[metrics]\nprometheus_port = {port}\n")
        try:
            snap = wait_for_status(tmp_path / "state" / "agent.sock")
            assert snap["state"] == "running"
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert f"Prometheus metrics on 127.0.0.1:{port}: the port is in use" in err
    assert "prometheus_port" in err and "runs on without metrics" in err
    assert "Traceback" not in err and "OSError" not in err


def test_metrics_beyond_loopback_warn_that_they_have_no_authentication(tmp_path: Path) -> None:
    port = free_port()
    proc = start_agent(tmp_path, config=f'[metrics]\nprometheus_port = {port}\n'
                                        'prometheus_host = "0.0.0.0"\n')
    try:
        wait_for_status(tmp_path / "state" / "agent.sock")
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read()
        assert b"lepton_frames_captured_total" in body
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert "WARNING" in err and "no authentication" in err and "0.0.0.0" in err
    check = run_cli("config", "check", str(tmp_path / "agent.toml"))
    assert check.returncode == 0 and "warning:" in check.stderr
    assert "no authentication" in check.stderr
    local = tmp_path / "local.toml"
    local.write_text(f"[metrics]\nprometheus_port = {port}\n")
    assert "no authentication" not in run_cli("config", "check", str(local)).stderr


def test_acks_for_seqs_the_device_never_assigned_are_ignored_and_counted(
        tmp_path: Path, broker) -> None:  # type: ignore[no-untyped-def]
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from agent.core.contract.ack import encode_ack

    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\nstate_dir = "{tmp_path / "state"}"\ndevice_id = "cam-ack"\n'
                   f'[model]\npath = "{DEFAULT_MODEL}"\n[mqtt]\nbroker = "{broker.url}"\n')
    proc = subprocess.Popen(agent_cmd("run", "--config", str(cfg), "--source",
                                      "synthetic://160x120@20"),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sock = tmp_path / "state" / "agent.sock"
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    try:
        snap = wait_for_status(sock)
        deadline = time.monotonic() + 60
        while not (snap["broker"]["connected"] and snap["outbox"]["published"] > 3):
            assert time.monotonic() < deadline, "the agent did not publish"
            time.sleep(0.1)
            snap = query(sock) or snap
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        # A forged ack: far beyond what cam0 has assigned, and a stream it never had.
        client.publish("lepton/v1/default/cam-ack/ack", encode_ack(
            {"cam0": [(1, 2), (2**40, 2**62)], "ghost": [(1, 1000)]}, ingest="forged"),
            qos=1).wait_for_publish(30)
        deadline = time.monotonic() + 60
        while (snap := query(sock) or snap)["outbox"]["acks_ignored"] < 2:
            assert time.monotonic() < deadline, snap["outbox"]
            time.sleep(0.1)
        assert snap["outbox"]["acks_ignored"] == 2
        assert snap["outbox"]["ingested"] == 2  # the part in range is taken: ACLs guard that
    finally:
        client.loop_stop()
        client.disconnect()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert "ignoring 2 ack range(s)" in err and "ghost up to 1000 (last seq 0)" in err
