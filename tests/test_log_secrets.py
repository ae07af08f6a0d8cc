"""No key material and no password in any log of a full run: agent and ingest over mutual TLS
with a broker password, at debug level, including refused connections (wrong password, a key
that does not match its certificate, an expired certificate). Every line they write (stderr is
what journald stores for the unit), every debug log they leave and the broker's log are
scanned for PEM armour, each line of each private key's base64 body, and the passwords."""

from __future__ import annotations

import datetime as dt
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from agent.devtools.mosquitto import LocalBroker, find_mosquitto
from agent.devtools.pki import init_ca, issue
from tests.conftest import ROOT, agent_cmd, ingested_seqs
from tests.e2e import ReapedIngest, wait_for, write_config

pytestmark = [pytest.mark.broker,
              pytest.mark.skipif(not find_mosquitto(), reason="needs mosquitto")]


def _passwd(path: Path, users: dict[str, str]) -> None:
    binary = Path(find_mosquitto() or "").parent.parent / "bin" / "mosquitto_passwd"
    tool = str(binary) if binary.exists() else "mosquitto_passwd"
    path.write_text("")
    for user, password in users.items():
        subprocess.run([tool, "-b", str(path), user, password], check=True, capture_output=True)


def _key_fragments(pem: Path) -> list[str]:
    """The base64 lines of a PEM private key: any of them in a log is a leak."""
    return [line for line in pem.read_text().splitlines()
            if line and not line.startswith("-----") and len(line) >= 16]


def _creds(directory: Path, key: Path, password: str) -> dict[str, str]:
    directory.mkdir()
    (directory / "tls-key").write_bytes(key.read_bytes())
    (directory / "mqtt-password").write_text(password + "\n")
    return {"CREDENTIALS_DIRECTORY": str(directory)}


@pytest.mark.slow  # whole runs of real processes: the default tier stays under 15 min
def test_no_key_material_and_no_password_in_any_log(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    init_ca(pki / "ca")
    issue("broker", pki / "ca", pki, role="broker")
    issue("cam1", pki / "ca", pki)
    issue("lepton-ingest", pki / "ca", pki, role="ingest")
    issue("cam1", pki / "ca", pki / "expired", days=1,
          not_before=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3))
    issue("cam2", pki / "ca", pki / "other")  # a key that is not cam1's
    password, wrong = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
    _passwd(tmp_path / "passwd", {"cam1": password, "lepton-ingest": password})

    logs = tmp_path / "logs"  # debug logs of every process (crash files, full tracebacks)
    base_env = {**os.environ, "XDG_STATE_HOME": str(logs)}
    written: list[str] = []

    broker = LocalBroker(tmp_path / "broker", password_file=tmp_path / "passwd",
                         tls={"ca": pki / "ca" / "ca.crt", "cert": pki / "broker.crt",
                              "key": pki / "broker.key"})
    broker.start()
    try:
        ingest = ReapedIngest(broker.url, tmp_path / "ingest.db", "--username", "lepton-ingest",
                              "--tls-ca", str(pki / "ca" / "ca.crt"), "--tls-cert",
                              str(pki / "lepton-ingest.crt"), "--log-level", "debug",
                              client_id="secrets-ingest", cwd=ROOT)
        ingest.env.update(base_env)
        ingest.env.update(_creds(tmp_path / "creds-ingest", pki / "lepton-ingest.key", password))
        ingest.start()

        def agent(name: str, cert: Path, key: Path, secret: str, frames: int) -> str:
            config = write_config(tmp_path / name, broker.url, "cam1")
            config.write_text(config.read_text().replace(
                "[mqtt]\n", f'[mqtt]\nusername = "cam1"\ntls_ca_file = "{pki / "ca" / "ca.crt"}"'
                            f'\ntls_cert_file = "{cert}"\n', 1))
            env = {**base_env, **_creds(tmp_path / name / "creds", key, secret)}
            out = subprocess.run(agent_cmd("run", "--config", str(config), "--source",
                                           "synthetic://160x120@10", "--pace", "fast",
                                           "--max-frames", str(frames), "--json",
                                           "--log-level", "debug"),
                                 capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
            written.extend([out.stdout, out.stderr])
            return out.stderr

        (tmp_path / "ok").mkdir()
        agent("ok", pki / "cam1.crt", pki / "cam1.key", password, 10)
        wait_for(lambda: ingested_seqs(tmp_path / "ingest.db", "cam1") == list(range(1, 11)),
                 "the 10 records at ingest")
        # Refused runs: their error paths log too.
        for name, cert, key, secret, cause in (
                ("wrong-password", pki / "cam1.crt", pki / "cam1.key", wrong, "refused"),
                ("mismatched-key", pki / "cam1.crt", pki / "other" / "cam2.key", password,
                 "cannot use the client certificate"),
                ("expired", pki / "expired" / "cam1.crt", pki / "expired" / "cam1.key",
                 password, "it has expired")):
            (tmp_path / name).mkdir()
            assert cause in agent(name, cert, key, secret, 3), name
        ingest.stop()
        written.extend([ingest.log, ingest.stdout])
    finally:
        broker.close()
    written.append(broker.log.read_text(errors="replace") if broker.log.exists() else "")
    debug_logs = sorted(logs.rglob("*")) if logs.exists() else []
    written.extend(p.read_text(errors="replace") for p in debug_logs if p.is_file())
    text = "\n".join(written)
    assert "connected to" in text and "it has expired" in text  # the scan saw the runs

    keys = [pki / "ca" / "ca.key", pki / "broker.key", pki / "cam1.key",
            pki / "lepton-ingest.key", pki / "expired" / "cam1.key", pki / "other" / "cam2.key"]
    fragments = [f for key in keys for f in _key_fragments(key)]
    assert len(fragments) >= len(keys)  # the scan has something to look for
    assert "-----BEGIN" not in text and "PRIVATE KEY" not in text
    leaks = sum(f in text for f in fragments)
    assert not leaks, f"{leaks} lines of private keys' base64 are in the logs"
    # Not echoed by the assertion: the report of a failing run must not leak it either.
    assert password not in text, "the broker password is in a log"
    assert wrong not in text, "the (wrong) password of a refused run is in a log"


def test_link_options_never_show_the_password() -> None:
    from agent.sync.mqtt import LinkOptions

    options = LinkOptions(client_id="c", username="cam", password="s3cr3t-Pa55")
    assert "s3cr3t" not in repr(options) and "s3cr3t" not in str(options)
