"""mqtts:// with mutual TLS: CA, server and client certificates made by openssl for the test;
the client key reaches the agent only through $CREDENTIALS_DIRECTORY."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.devtools.mosquitto import LocalBroker, find_mosquitto
from tests.conftest import DEFAULT_MODEL, run_cli

pytestmark = [pytest.mark.broker,
              pytest.mark.skipif(not shutil.which("openssl") or not find_mosquitto(),
                                 reason="needs openssl and mosquitto")]


def make_pki(d: Path) -> dict[str, Path]:
    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "30", "-subj", "/CN=lepton-test-ca")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, cn in (("server", "127.0.0.1"), ("client", "cam-tls")):
        ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={cn}")
        ssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "20",
            *(["-extfile", "san.ext"] if name == "server" else []))
    return {n: d / n for n in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")}


def test_agent_and_diag_over_mutual_tls(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    creds = tmp_path / "creds"
    creds.mkdir()
    shutil.copy(pki["client.key"], creds / "tls-key")
    env = {**os.environ, "CREDENTIALS_DIRECTORY": str(creds)}
    tls = {"ca": pki["ca.crt"], "cert": pki["server.crt"], "key": pki["server.key"]}
    with LocalBroker(tmp_path / "broker", tls=tls) as broker:
        cfg = tmp_path / "agent.toml"
        cfg.write_text(f'[agent]\nstate_dir = "{tmp_path / "state"}"\ndevice_id = "cam-tls"\n'
                       f'[model]\npath = "{DEFAULT_MODEL}"\n'
                       f'[mqtt]\nbroker = "{broker.url}"\ntls_ca_file = "{pki["ca.crt"]}"\n'
                       f'tls_cert_file = "{pki["client.crt"]}"\n[outbox]\ndelivery = "broker"\n')
        out = run_cli("run", "--config", str(cfg), "--source", "synthetic://160x120@10", "--pace",
                      "fast", "--max-frames", "15", "--json", env=env)
        assert out.returncode == 0, out.stderr
        summary = json.loads(out.stdout.strip().splitlines()[-1])
        assert summary["results_published"] == 15 and summary["backlog"] == 0
        diag = run_cli("diag", "broker", "--config", str(cfg), "--json", env=env)
        check = json.loads(diag.stdout)["checks"][0]
        assert check["status"] == "warn"  # connected, but the certificate expires in < 30 days
        assert "expires in 20 days" in check["reason"] or "expires in 19 days" in check["reason"]
        # Without the client key diag says the key is missing and where it is expected (it
        # said "PEM lib" and suggested the clock).
        empty = tmp_path / "no-creds"
        empty.mkdir()
        for no_key_env in ({**env, "CREDENTIALS_DIRECTORY": str(empty)},
                           {k: v for k, v in env.items() if k != "CREDENTIALS_DIRECTORY"}):
            no_key = run_cli("diag", "broker", "--config", str(cfg), env=no_key_env)
            assert no_key.returncode == 2 and "[FAIL] broker" in no_key.stdout
            assert "tls-key is missing" in no_key.stdout and "LoadCredential=tls-key" in no_key.stdout
            assert "clock" not in no_key.stdout and "PEM lib" not in no_key.stdout
        assert str(empty / "tls-key") in run_cli("diag", "broker", "--config", str(cfg),
                                                  env={**env, "CREDENTIALS_DIRECTORY": str(empty)}
                                                  ).stdout


def _mtls_config(tmp_path: Path, pki: dict[str, Path], *, ca: Path | None = None) -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\nstate_dir = "{tmp_path / "state"}"\n'
                   f'[model]\npath = "{DEFAULT_MODEL}"\n'
                   f'[mqtt]\nbroker = "mqtts://127.0.0.1:1"\n'
                   f'tls_ca_file = "{ca or pki["ca.crt"]}"\n'
                   f'tls_cert_file = "{pki["client.crt"]}"\n')
    return cfg


def test_run_without_the_key_credential_names_it(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    cfg = _mtls_config(tmp_path, pki)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "tls-key").write_text("")  # empty: as good as missing
    args = ("run", "--config", str(cfg), "--source", "synthetic://160x120@10", "--max-frames", "1")
    out = run_cli(*args, env={**os.environ, "CREDENTIALS_DIRECTORY": str(creds)})
    assert out.returncode == 2, out.stderr
    assert "tls-key is missing or empty" in out.stderr and str(creds / "tls-key") in out.stderr
    assert "mqtt.tls_cert_file" in out.stderr and "PEM lib" not in out.stderr
    assert "Traceback" not in out.stderr
    # A key that is not the certificate's: named, with both files.
    shutil.copy(pki["server.key"], creds / "tls-key")
    out = run_cli(*args, env={**os.environ, "CREDENTIALS_DIRECTORY": str(creds)})
    assert out.returncode == 2 and "cannot use the client certificate" in out.stderr
    assert str(pki["client.crt"]) in out.stderr and "Traceback" not in out.stderr


def test_a_missing_ca_file_fails_config_check_with_its_name(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    missing = tmp_path / "nowhere" / "ca.pem"
    cfg = _mtls_config(tmp_path, pki, ca=missing)
    check = run_cli("config", "check", str(cfg))
    assert check.returncode == 2
    assert str(missing) in check.stderr and "[mqtt.tls_ca_file]" in check.stderr
    assert f"{cfg}:7" in check.stderr  # the line that names it
    creds = tmp_path / "creds"
    creds.mkdir()
    shutil.copy(pki["client.key"], creds / "tls-key")
    run = run_cli("run", "--config", str(cfg), "--source", "synthetic://160x120@10",
                  env={**os.environ, "CREDENTIALS_DIRECTORY": str(creds)})
    assert run.returncode == 2 and str(missing) in run.stderr
    assert "FileNotFoundError" not in run.stderr and "Traceback" not in run.stderr
