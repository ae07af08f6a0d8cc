"""diag: every check, the support bundle without secrets, journald and secret-free logs."""

from __future__ import annotations

import json
import logging
import os
import socket
import tarfile
from pathlib import Path

from agent.config import load_config
from agent.diag.checks import check_cache, check_memory, check_temperature
from agent.service.logs import JournalHandler, SecretFilter
from tests.conftest import run_cli


def test_diag_all_checks_json(tmp_path: Path, broker) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\nstate_dir = "{tmp_path}"\n[mqtt]\nbroker = "{broker.url}"\n')
    snap = tmp_path / "snap.jpg"
    out = run_cli("diag", "--config", str(cfg), "--json", "--snapshot", str(snap))
    report = json.loads(out.stdout)
    by_name = {c["name"]: c for c in report["checks"]}
    assert set(by_name) == {"config", "camera", "sensors", "model", "pipelines", "kernels",
                            "broker", "cache", "storage", "clock", "temperature", "memory"}
    for name in ("config", "camera", "model", "pipelines", "kernels", "broker", "cache"):
        assert by_name[name]["status"] == "pass", by_name[name]
    assert snap.stat().st_size > 1000
    assert out.returncode == report["exit_code"] in (0, 1)
    assert all(c["reason"] for c in report["checks"])


def test_diag_names_the_broken_thing(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[source]\nuri = "v4l2:///dev/video42"\n[model]\npath = "/nope"\n'
                   '[mqtt]\nbroker = "mqtt://127.0.0.1:1"\n')
    out = run_cli("diag", "camera", "model", "broker", "--config", str(cfg))
    assert out.returncode == 2
    assert "[FAIL] camera: source v4l2:///dev/video42: no such device" in out.stdout
    assert "video' group" in out.stdout
    assert "[FAIL] model: model /nope: does not exist" in out.stdout
    assert "[FAIL] broker: cannot reach 127.0.0.1:1" in out.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[agent]\nbogus = 1\n")
    out = run_cli("diag", "config", "--config", str(bad))
    assert out.returncode == 2 and f"[FAIL] config: {bad}:2 [agent.bogus]: unknown key" in out.stdout


def test_checks_on_missing_sysfs_and_full_disks(tmp_path: Path) -> None:
    cfg = load_config(overrides={"thermal": {"sysfs": str(tmp_path)},
                                 "agent": {"state_dir": str(tmp_path)}})
    assert check_temperature(cfg).status == "skip"  # no sensors: nothing to act on, not a warning
    assert check_memory(cfg, tmp_path / "nope").status == "warn"
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 1000000 kB\nMemAvailable: 40000 kB\n")
    assert check_memory(cfg, meminfo).status == "fail"
    (tmp_path / "outbox.db").write_bytes(b"garbage" * 1000)
    result = check_cache(cfg)
    assert result.status == "fail" and "moves a corrupt file aside" in result.fix


def test_bundle_has_no_secrets(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text("hunter2-secret\n")
    state = tmp_path / "state"
    state.mkdir()
    (state / "agent.log").write_text("connecting with password hunter2-secret to broker\n")
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\nstate_dir = "{state}"\n[mqtt]\nbroker = "mqtt://127.0.0.1:1"\n'
                   'username = "cam-1"\n')
    out_path = tmp_path / "bundle.tar.gz"
    env = {**os.environ, "CREDENTIALS_DIRECTORY": str(creds)}
    out = run_cli("diag", "bundle", "--config", str(cfg), "--output", str(out_path), env=env)
    assert "secrets removed" in out.stdout, out.stderr
    with tarfile.open(out_path) as tar:
        names = {Path(m.name).name for m in tar.getmembers()}
        texts = [tar.extractfile(m).read().decode() for m in tar.getmembers()]  # type: ignore[union-attr]
    assert {"diag.json", "config.json", "versions.json", "board.txt", "logs.txt",
            "status.json"} <= names
    joined = "\n".join(texts)
    assert "hunter2-secret" not in joined and "***" in joined and "cam-1" in joined


def test_secret_filter_and_journal_protocol(tmp_path: Path) -> None:
    path = str(tmp_path / "journal.sock")
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(path)
    handler = JournalHandler(address=path)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(SecretFilter(["s3cr3t-pw"]))
    log = logging.getLogger("agent.test-journal")
    log.addHandler(handler)
    log.propagate = False
    log.warning("login with %s failed\nsecond line", "s3cr3t-pw")
    data = sink.recv(65536)
    sink.close()
    assert b"PRIORITY=4\n" in data and b"LOGGER=agent.test-journal\n" in data
    assert b"SYSLOG_IDENTIFIER=lepton-agent\n" in data and b"s3cr3t-pw" not in data
    assert b"MESSAGE\n" in data and b"login with *** failed\nsecond line" in data
