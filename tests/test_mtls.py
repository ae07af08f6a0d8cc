"""Mutual TLS with per-device ACLs on a real mosquitto: certificates from `lepton-agent pki`,
the broker run with the reference ACL (docs/broker/acl, the one docs/contract.md shows),
use_identity_as_username, and real agent and ingest processes."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import re
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.devtools.mosquitto import LocalBroker, find_mosquitto
from agent.devtools.pki import issue
from tests.conftest import ROOT, agent_cmd, ingested_seqs, run_cli
from tests.e2e import AgentProcess, ReapedIngest, outbox_seqs, wait_for, write_config

pytestmark = [pytest.mark.broker, pytest.mark.skipif(not find_mosquitto(), reason="needs mosquitto")]

ACL = ROOT / "docs" / "broker" / "acl"
NOT_AUTHORIZED = 0x87


@dataclass(frozen=True)
class Fleet:
    """A CA from the CLI, certificates for cam1, cam2, ingest and ctl, a broker with the ACL."""

    dir: Path
    broker: LocalBroker

    @property
    def ca(self) -> Path:
        return self.dir / "ca" / "ca.crt"

    def cert(self, name: str) -> Path:
        return self.dir / "certs" / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / "certs" / f"{name}.key"


def _issue(tmp_path: Path) -> None:
    """A test fleet's CA and certificates, from the CLI."""
    out = run_cli("pki", "init", "--out", str(tmp_path / "ca"))
    assert out.returncode == 0, out.stderr
    for name, role in (("broker", "broker"), ("cam1", "device"), ("cam2", "device"),
                       ("lepton-ingest", "ingest"), ("lepton-ctl", "ctl")):
        out = run_cli("pki", "issue", name, "--role", role, "--ca", str(tmp_path / "ca"),
                      "--out", str(tmp_path / "certs"), "--json")
        assert out.returncode == 0, out.stderr
        assert oct((tmp_path / "certs" / f"{name}.key").stat().st_mode & 0o777) == "0o600"


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    _issue(tmp_path)
    certs = tmp_path / "certs"
    broker = LocalBroker(tmp_path / "broker", acl_file=ACL,
                         tls={"ca": tmp_path / "ca" / "ca.crt", "cert": certs / "broker.crt",
                              "key": certs / "broker.key"})
    broker.start()
    yield Fleet(tmp_path, broker)
    broker.close()


def test_the_reference_acl_is_the_one_the_contract_documents() -> None:
    text = (ROOT / "docs" / "contract.md").read_text()
    found = re.search(r"## Acks and ACLs.*?```acl\n(.*?)```", text, re.S)
    assert found and found.group(1) == ACL.read_text()
    conf = (ROOT / "docs" / "broker" / "mosquitto.conf").read_text()
    for line in ("require_certificate true", "use_identity_as_username true",
                 "allow_anonymous false", "acl_file /etc/mosquitto/lepton.acl"):
        assert line in conf.splitlines(), line


_ids = itertools.count()


class Client:
    """A paho MQTT 5 client over mutual TLS under one certificate, recording the broker's
    PUBACK/SUBACK reason codes and the topics it receives."""

    def __init__(self, fleet: Fleet, name: str, username: str | None = None) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5,
                                  client_id=f"mtls-{name}-{next(_ids)}", reconnect_on_failure=False)
        self.client.tls_set(ca_certs=str(fleet.ca), certfile=str(fleet.cert(name)),
                            keyfile=str(fleet.key(name)), cert_reqs=ssl.CERT_REQUIRED)
        if username:  # ignored by the broker: the certificate's CN is the user name
            self.client.username_pw_set(username)
        self.codes: dict[int, int] = {}
        self.messages: list[str] = []
        self.changed = threading.Condition()
        self.client.on_publish = lambda c, u, mid, reason, p: self._code(mid, reason.value)
        self.client.on_subscribe = lambda c, u, mid, reasons, p: self._code(mid, reasons[0].value)
        self.client.on_message = self._message
        connected = threading.Event()
        self.client.on_connect = lambda c, u, flags, reason, p: connected.set()
        self.client.connect("127.0.0.1", fleet.broker.port)
        self.client.loop_start()
        assert connected.wait(30), f"{name} could not connect"

    def _code(self, mid: int, code: int) -> None:
        with self.changed:
            self.codes[mid] = code
            self.changed.notify_all()

    def _message(self, c: Any, u: Any, message: paho.MQTTMessage) -> None:
        with self.changed:
            self.messages.append(message.topic)
            self.changed.notify_all()

    def _wait(self, mid: int) -> int:
        with self.changed:
            assert self.changed.wait_for(lambda: mid in self.codes, timeout=30)
            return self.codes[mid]

    def publish(self, topic: str) -> int:
        """The PUBACK reason code of a QoS 1 publish (0 success, 0x10 no subscribers)."""
        return self._wait(self.client.publish(topic, b"{}", qos=1).mid)

    def subscribe(self, topic: str) -> int:
        """The SUBACK reason code (1: granted QoS 1)."""
        return self._wait(self.client.subscribe(topic, qos=1)[1])

    def wait_message(self, topic: str) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: topic in self.messages, timeout=30), topic

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish_code(fleet: Fleet, name: str, topic: str, username: str | None = None) -> int:
    """PUBACK code for one publish on a client of its own: mosquitto closes the connection of
    a client it refused a publish."""
    client = Client(fleet, name, username)
    try:
        return client.publish(topic)
    finally:
        client.close()


def test_a_device_publishes_and_receives_only_on_its_own_topics(fleet: Fleet) -> None:
    base1, base2 = "lepton/v1/site-a/cam1", "lepton/v1/site-a/cam2"
    cam1, cam2 = Client(fleet, "cam1"), Client(fleet, "cam2")
    ingest, ctl = Client(fleet, "lepton-ingest"), Client(fleet, "lepton-ctl")
    try:
        assert ingest.subscribe("$share/ingest/lepton/v1/+/+/results/+") == 1
        assert ctl.subscribe("lepton/v1/+/+/reply/#") == 1
        assert cam1.subscribe(f"{base1}/ack") == 1
        assert cam1.subscribe(f"{base1}/cmd/#") == 1
        # cam2 asks for cam1's topics: mosquitto 2.0's acl_file grants any SUBACK (a newer
        # broker may refuse with 0x87); what matters is that nothing of cam1's is delivered.
        spy_codes = [cam2.subscribe(f"{base1}/{kind}") for kind in ("ack", "cmd/#", "results/+")]
        assert all(code in (1, NOT_AUTHORIZED) for code in spy_codes), spy_codes
        assert cam2.subscribe(f"{base2}/cmd/#") == 1

        # Its own uplink: taken (0, or 0x10 where nobody subscribes), and ingest receives it.
        for kind in ("status", "telemetry", "results/cam0", "sensors/imu", "events/cam0",
                     "counts/cam0", "shards/" + "0" * 64, "diag", "reply", "reply/r1"):
            assert cam1.publish(f"{base1}/{kind}") in (0, 0x10), kind
        ingest.wait_message(f"{base1}/results/cam0")
        ctl.wait_message(f"{base1}/reply")
        ctl.wait_message(f"{base1}/reply/r1")
        # ingest acks and ctl commands reach cam1; nothing of them reaches cam2, which gets its
        # own command (sent last by the same client, so delivered after the others).
        assert ingest.publish(f"{base1}/ack") == 0
        assert ctl.publish(f"{base1}/cmd/ping") == 0
        assert ctl.publish(f"{base2}/cmd/ping") == 0
        cam1.wait_message(f"{base1}/ack")
        cam1.wait_message(f"{base1}/cmd/ping")
        cam2.wait_message(f"{base2}/cmd/ping")
        assert cam2.messages == [f"{base2}/cmd/ping"]
    finally:
        for client in (cam1, cam2, ingest, ctl):
            client.close()

    # Not authorized: another device's prefix, any ack (its own included), any command, and
    # ingest or ctl writing what is not theirs. The user name sent is not used: cam2 stays cam2.
    for name, topic in (("cam2", f"{base1}/results/cam0"), ("cam2", f"{base1}/status"),
                        ("cam1", f"{base1}/ack"), ("cam1", f"{base2}/ack"),
                        ("cam1", f"{base1}/cmd/ping"), ("cam1", f"{base2}/reply/r1"),
                        ("lepton-ingest", f"{base1}/cmd/ping"),
                        ("lepton-ctl", f"{base1}/ack"), ("lepton-ctl", f"{base1}/results/cam0")):
        assert publish_code(fleet, name, topic) == NOT_AUTHORIZED, (name, topic)
    assert publish_code(fleet, "cam2", f"{base1}/results/cam0", username="cam1") == NOT_AUTHORIZED


def _creds(fleet: Fleet, name: str) -> dict[str, str]:
    """The environment of a unit with LoadCredential=tls-key: the key only there."""
    creds = fleet.dir / f"creds-{name}"
    creds.mkdir(exist_ok=True)
    shutil.copy(fleet.key(name), creds / "tls-key")
    return {**os.environ, "CREDENTIALS_DIRECTORY": str(creds)}


def _agent_config(fleet: Fleet, tmp: Path, cert: Path, grace: float = 60) -> Path:
    # A long grace: the agent exits as soon as its backlog is acknowledged, and a loaded
    # machine once needed more than the rig's 8 s to drain 20 records after the reconnect.
    config = write_config(tmp, fleet.broker.url, "cam1", grace=grace)
    config.write_text(config.read_text().replace(
        "[mqtt]\n", f'[mqtt]\ntls_ca_file = "{fleet.ca}"\ntls_cert_file = "{cert}"\n', 1))
    assert f'tls_cert_file = "{cert}"' in config.read_text()
    return config


def _ingest(fleet: Fleet) -> ReapedIngest:
    """Ingest as lepton-ingest over mutual TLS, its certificate and key by flag."""
    flags = ["--tls-ca", str(fleet.ca), "--tls-cert", str(fleet.cert("lepton-ingest")),
             "--tls-key", str(fleet.key("lepton-ingest"))]
    ingest = ReapedIngest(fleet.broker.url, fleet.dir / "ingest.db", *flags,
                          client_id="mtls-ingest", group="ingest", cwd=ROOT)
    ingest.start()
    return ingest


def test_ctl_commands_a_device_over_mtls_and_a_device_cannot(fleet: Fleet,
                                                             tmp_path: Path) -> None:
    config = _agent_config(fleet, tmp_path, fleet.cert("cam1"), grace=1)  # no ingest here
    agent = AgentProcess(config, "--source", "synthetic://160x120@5", env=_creds(fleet, "cam1"))

    def ctl(name: str) -> subprocess.CompletedProcess[str]:
        return run_cli("ctl", "--broker", fleet.broker.url, "--site", "test-site", "cam1",
                       "ping", "--timeout", "3", "--json", "--ca", str(fleet.ca),
                       "--cert", str(fleet.cert(name)), "--key", str(fleet.key(name)))

    try:
        wait_for(lambda: any("connected to" in line for line in agent.lines), "agent connected")
        # The agent subscribes right after connecting: the first ping may precede it.
        answered = wait_for(lambda: (out := ctl("lepton-ctl")).returncode == 0 and out, "a pong")
        assert json.loads(answered.stdout)["ok"] is True
        # cam2's certificate gets no command through (PUBACK 0x87): no reply, exit 3.
        refused = ctl("cam2")
        assert refused.returncode == 3 and len(refused.stderr.strip().splitlines()) == 1, \
            refused.stderr
    finally:
        agent.stop()


def _one_tls_line(lines: list[str], cause: str) -> str:
    """The single log line that reports the TLS refusal, asserting there is one and no
    traceback."""
    hits = [line for line in lines if cause in line]
    assert len(hits) == 1, lines
    assert not any("Traceback" in line for line in lines), lines
    return hits[0]


@pytest.mark.slow  # whole runs of real processes: the default tier stays under 15 min
def test_agent_and_ingest_over_mtls_and_rotating_an_expired_certificate_keeps_the_outbox(
        fleet: Fleet, tmp_path: Path) -> None:
    # cam1's certificate expired yesterday: the agent keeps its results and says so, once.
    yesterday = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2)
    device = tmp_path / "device"
    issue("cam1", fleet.dir / "ca", device, not_before=yesterday, days=1)
    env = _creds(fleet, "cam1")
    shutil.copy(device / "cam1.key", Path(env["CREDENTIALS_DIRECTORY"]) / "tls-key")
    config = _agent_config(fleet, tmp_path, device / "cam1.crt")
    ingest = _ingest(fleet)
    agent = AgentProcess(config, "--source", "synthetic://160x120@10", "--pace", "fast",
                         "--max-frames", "12", env=env)
    summary = agent.finish(120)
    line = _one_tls_line(agent.lines, "it has expired")
    assert str(device / "cam1.crt") in line and "pki issue" in line
    assert summary["broker_error"] and "it has expired" in summary["broker_error"]
    assert outbox_seqs(tmp_path / "state") == list(range(1, 13))
    assert ingested_seqs(fleet.dir / "ingest.db", "cam1") == []

    # Rotation: a new certificate and key replace the files while the agent is stopped.
    issue("cam1", fleet.dir / "ca", device, force=True)
    shutil.copy(device / "cam1.key", Path(env["CREDENTIALS_DIRECTORY"]) / "tls-key")
    agent = AgentProcess(config, "--source", "synthetic://160x120@10", "--pace", "fast",
                         "--max-frames", "8", env=env)
    summary = agent.finish(120)
    assert summary["broker_error"] is None and summary["backlog"] == 0, summary
    wait_for(lambda: len(ingested_seqs(fleet.dir / "ingest.db", "cam1")) >= 20, "20 records")
    # Each seq once, none lost.
    assert ingested_seqs(fleet.dir / "ingest.db", "cam1") == list(range(1, 21))
    ingest.stop()
    assert not any("Traceback" in line for line in agent.lines + ingest.log.splitlines())


@pytest.mark.parametrize("case", ["expired", "foreign-ca", "no-certificate", "missing-file"])
def test_a_refused_certificate_is_one_clear_line(fleet: Fleet, tmp_path: Path,
                                                  case: str) -> None:
    certs = tmp_path / "refused"  # beside the fleet's own certs/
    if case == "expired":
        issue("cam1", fleet.dir / "ca", certs, days=1,
              not_before=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3))
        issue("lepton-ingest", fleet.dir / "ca", certs, role="ingest", days=1,
              not_before=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3))
        cause = "it has expired"
    elif case == "foreign-ca":
        assert run_cli("pki", "init", "--out", str(tmp_path / "evil")).returncode == 0
        for name, role in (("cam1", "device"), ("lepton-ingest", "ingest")):
            issue(name, tmp_path / "evil", certs, role=role)
        cause = "not signed by a CA the broker trusts"
    elif case == "no-certificate":
        cause = "requires a client certificate and none was sent"
    else:
        certs.mkdir()
        cause = "no such file"  # ingest checks its flags before connecting, in its own words
    cert = certs / "cam1.crt"

    # The agent.
    env = {**os.environ}
    if case in ("expired", "foreign-ca"):
        creds = tmp_path / "creds"
        creds.mkdir()
        shutil.copy(certs / "cam1.key", creds / "tls-key")
        env["CREDENTIALS_DIRECTORY"] = str(creds)
    else:
        env = _creds(fleet, "cam1")
    config = _agent_config(fleet, tmp_path, cert)
    if case == "no-certificate":
        config.write_text(config.read_text().replace(f'tls_cert_file = "{cert}"\n', ""))
    out = subprocess.run(agent_cmd("run", "--config", str(config), "--source",
                                   "synthetic://160x120@10", "--pace", "fast", "--max-frames",
                                   "3", "--json"), capture_output=True, text=True, timeout=120,
                         cwd=ROOT, env=env)
    line = _one_tls_line(out.stderr.splitlines(), cause)
    if case == "missing-file":
        assert out.returncode != 0 and str(cert) in line and "fix:" in line
    else:
        assert out.returncode == 0, out.stderr
        assert "fix:" in line and json.loads(out.stdout.splitlines()[-1])["backlog"] == 3
        if case != "no-certificate":
            assert str(cert) in line

    # Ingest, with the same kind of certificate.
    flags = ["ingest", "--broker", fleet.broker.url, "--db", f"sqlite:///{tmp_path / 'i.db'}",
             "--tls-ca", str(fleet.ca)]
    if case != "no-certificate":
        flags += ["--tls-cert", str(certs / "lepton-ingest.crt"),
                  "--tls-key", str(certs / "lepton-ingest.key")]
    proc = subprocess.Popen(agent_cmd(*flags), cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        lines: list[str] = []
        assert proc.stderr is not None
        for raw in proc.stderr:  # until the refusal is logged (or ingest exits)
            lines.append(raw.rstrip("\n"))
            if cause in raw or "does not exist" in raw or "Traceback" in raw:
                break
    finally:
        proc.terminate()
        rest = proc.communicate(timeout=30)[1]
    lines += rest.splitlines()
    if case == "missing-file":
        cause = "does not exist or is not a file"
    line = _one_tls_line(lines, cause)
    assert "fix:" in line
    if case == "missing-file":
        assert proc.returncode != 0 and "lepton-ingest.crt" in line


def test_pki_refuses_bad_input_with_one_line_and_keeps_keys_private(tmp_path: Path) -> None:
    from cryptography import x509

    ca = tmp_path / "ca"
    assert run_cli("pki", "init", "--out", str(ca)).returncode == 0
    assert oct((ca / "ca.key").stat().st_mode & 0o777) == "0o600"
    cases = {
        "an existing CA": (("pki", "init", "--out", str(ca)), "already exists"),
        "no CA": (("pki", "issue", "cam1", "--ca", str(tmp_path / "nope"), "--out",
                   str(tmp_path)), "pki init --out"),
        "a name with a slash": (("pki", "issue", "cam/1", "--ca", str(ca), "--out",
                                 str(tmp_path)), "not a valid topic segment"),
        "a wildcard name": (("pki", "issue", "cam+", "--ca", str(ca), "--out", str(tmp_path)),
                            "not a valid topic segment"),
        "zero days": (("pki", "issue", "cam1", "--ca", str(ca), "--out", str(tmp_path),
                       "--days", "0"), "must be at least 1"),
    }
    for what, (args, expected) in cases.items():
        out = run_cli(*args)
        lines = out.stderr.strip().splitlines()
        assert out.returncode != 0 and len(lines) == 1 and expected in lines[0], (what, out.stderr)
        assert "fix:" in lines[0] and "Traceback" not in out.stderr, what
    out = run_cli("pki", "issue", "cam-7", "--ca", str(ca), "--out", str(tmp_path / "c"), "--json")
    issued = json.loads(out.stdout)
    cert = x509.load_pem_x509_certificate(Path(issued["cert"]).read_bytes())
    assert cert.subject.rfc4514_string() == "CN=cam-7"
    assert cert.issuer == x509.load_pem_x509_certificate((ca / "ca.crt").read_bytes()).subject
    assert oct(Path(issued["key"]).stat().st_mode & 0o777) == "0o600"
    again = run_cli("pki", "issue", "cam-7", "--ca", str(ca), "--out", str(tmp_path / "c"))
    assert again.returncode != 0 and "--force" in again.stderr
    # Independent check of the chain and the client role: openssl itself.
    if shutil.which("openssl"):
        verify = subprocess.run(["openssl", "verify", "-purpose", "sslclient", "-CAfile",
                                 str(ca / "ca.crt"), issued["cert"]], capture_output=True, text=True)
        assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.fixture
def dynsec_fleet(tmp_path: Path) -> Iterator[Fleet]:
    """The same fleet behind mosquitto's dynamic-security plugin, configured from the
    reference ACL file (agent.devtools.dynsec): subscriptions are checked too."""
    from agent.devtools.dynsec import find_plugin, write_dynsec

    plugin = find_plugin()
    if plugin is None:
        pytest.skip("mosquitto's dynamic-security plugin is not installed")
    _issue(tmp_path)
    certs = tmp_path / "certs"
    config = write_dynsec(tmp_path / "dynsec.json", ACL.read_text(), ["cam1", "cam2"])
    broker = LocalBroker(tmp_path / "broker", tls={"ca": tmp_path / "ca" / "ca.crt",
                                                   "cert": certs / "broker.crt",
                                                   "key": certs / "broker.key"})
    conf = broker.conf.read_text().replace("allow_anonymous true", "allow_anonymous false")
    broker.conf.write_text(conf + f"use_identity_as_username true\nplugin {plugin}\n"
                                  f"plugin_opt_config_file {config}\n")
    broker.start()
    yield Fleet(tmp_path, broker)
    broker.close()


def test_with_dynamic_security_a_foreign_subscription_is_not_authorized(
        dynsec_fleet: Fleet) -> None:
    """mosquitto 2.0's acl_file grants every SUBACK; under the dynamic-security plugin made from
    the same ACL, a device's subscription to another device's topics (or to everything) gets
    0x87, its own are granted, and publishing is refused as under the ACL file."""
    fleet = dynsec_fleet
    base1, base2 = "lepton/v1/site-a/cam1", "lepton/v1/site-a/cam2"
    cam1, cam2 = Client(fleet, "cam1"), Client(fleet, "cam2")
    ingest, ctl = Client(fleet, "lepton-ingest"), Client(fleet, "lepton-ctl")
    try:
        assert ingest.subscribe("$share/ingest/lepton/v1/+/+/results/+") == 1
        assert ctl.subscribe("lepton/v1/+/+/reply/#") == 1
        assert ctl.subscribe("lepton/v1/+/+/ota") == 1
        assert cam1.subscribe(f"{base1}/ack") == 1
        assert cam1.subscribe(f"{base1}/cmd/+") == 1
        for topic in (f"{base1}/ack", f"{base1}/cmd/#", f"{base1}/results/+",
                      "lepton/v1/+/+/#", "lepton/v1/site-a/+/ack", "#",
                      f"$share/g/{base1}/ack"):
            assert cam2.subscribe(topic) == NOT_AUTHORIZED, topic
        assert ctl.subscribe(f"{base1}/results/+") == NOT_AUTHORIZED
        assert ingest.subscribe(f"{base1}/cmd/#") == NOT_AUTHORIZED
        assert cam2.subscribe(f"{base2}/cmd/#") == 1
        # delivery still works where it is granted
        assert cam1.publish(f"{base1}/results/cam0") in (0, 0x10)
        ingest.wait_message(f"{base1}/results/cam0")
        assert cam1.publish(f"{base1}/ota") in (0, 0x10)
        ctl.wait_message(f"{base1}/ota")
        assert ctl.publish(f"{base1}/cmd/ping") == 0
        assert ctl.publish(f"{base2}/cmd/ping") == 0
        cam1.wait_message(f"{base1}/cmd/ping")
        cam2.wait_message(f"{base2}/cmd/ping")
        assert cam2.messages == [f"{base2}/cmd/ping"]
    finally:
        for client in (cam1, cam2, ingest, ctl):
            client.close()
    for name, topic in (("cam2", f"{base1}/results/cam0"), ("cam1", f"{base1}/ack"),
                        ("cam1", f"{base1}/cmd/ping"), ("lepton-ctl", f"{base1}/ack"),
                        ("lepton-ingest", f"{base1}/cmd/ping")):
        assert publish_code(fleet, name, topic) == NOT_AUTHORIZED, (name, topic)
