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
        # without the client key the broker refuses us, and diag says where to look
        no_key = run_cli("diag", "broker", "--config", str(cfg))
        assert no_key.returncode == 2 and "[FAIL] broker" in no_key.stdout
