"""The field technician's checks. Each returns pass/warn/fail with a one-line reason and fix."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from agent.config import AgentConfig, Secrets
from agent.diag import Check, CheckResult, Status
from agent.errors import AgentError


def check_camera(cfg: AgentConfig, snapshot: Path | None, seconds: float = 3.0) -> CheckResult:
    import cv2

    from agent.core.uri import parse_source
    from agent.sources.readers import open_reader

    uri = cfg.source.uri
    try:
        reader = open_reader(parse_source(uri))
    except (AgentError, ValueError) as exc:
        fix = exc.fix if isinstance(exc, AgentError) and exc.fix else "check [source] uri"
        return CheckResult("camera", "fail", str(exc).split(" (fix:")[0], fix)
    frames, first, last, image = 0, None, None, None
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and frames < 300:
            frame = reader.read()
            if frame is None:
                break
            now = time.monotonic()
            first = first or now
            last, image, frames = now, frame, frames + 1
            if reader.fps and frames >= min(30, reader.fps * seconds):
                break
            if parse_source(uri).kind == "synthetic":
                time.sleep(1 / max(reader.fps, 1))
    finally:
        reader.close()
    if frames == 0 or image is None:
        return CheckResult("camera", "fail", f"{uri} opened but delivered no frame",
                           "check the cable/stream; try another resolution or format")
    fps = (frames - 1) / (last - first) if first and last and last > first else 0.0
    details: dict[str, Any] = {"frames": frames, "measured_fps": round(fps, 1),
                               "declared_fps": reader.fps, "size": [image.shape[1], image.shape[0]]}
    if snapshot:
        snapshot.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(snapshot), image)
        details["snapshot"] = str(snapshot)
    reason = f"{uri}: {image.shape[1]}x{image.shape[0]}, {fps:.1f} fps measured"
    if reader.fps and fps and fps < 0.5 * reader.fps and frames > 5:
        return CheckResult("camera", "warn", reason + f" (declared {reader.fps:.0f})",
                           "lower the resolution, or check USB bandwidth and lighting (exposure)",
                           details)
    return CheckResult("camera", "pass", reason, details=details)


def probe_sensor(uri: str, seconds: float = 2.0) -> dict[str, Any]:
    """Open one sensor port, read for ``seconds``, parse: bytes, readings, errors, latest."""
    import serial

    from agent.core.sensors import make_parser
    from agent.core.uri import parse_sensor_uri
    from agent.sources.serial import open_failure_hint

    u = parse_sensor_uri(uri)
    out: dict[str, Any] = {"name": u.name, "port": u.port, "baud": u.baud,
                           "protocol": u.protocol, "bytes": 0, "readings": 0, "parse_errors": 0,
                           "last_error": None, "latest": None, "opened": False}
    try:
        port = serial.Serial(u.port, u.baud, timeout=0.1)
    except (serial.SerialException, OSError) as exc:
        out["last_error"] = f"cannot open: {exc}"
        out["fix"] = open_failure_hint(u.port, exc)
        return out
    out["opened"] = True
    parser = make_parser(u.protocol, u.name, time.time, columns=list(u.columns) or None)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            data = port.read(4096)
            out["bytes"] += len(data)
            for reading in parser.feed(data):
                out["readings"] += 1
                out["latest"] = reading.values
    except (serial.SerialException, OSError) as exc:
        out["last_error"] = f"read failed: {exc}"
    finally:
        port.close()
    out["parse_errors"] = parser.errors
    out["last_error"] = out["last_error"] or parser.last_error
    return out


def check_sensors(cfg: AgentConfig, seconds: float = 2.0) -> CheckResult:
    """Each configured serial port: opens, bytes arrive, they parse."""
    if not cfg.sensors:
        return CheckResult("sensors", "pass", "no serial sensors configured",
                           details={"sensors": []})
    probes = [probe_sensor(s.uri, seconds) for s in cfg.sensors]
    details: dict[str, Any] = {"sensors": probes}
    lines = []
    status: Status = "pass"
    fix = ""
    for p in probes:
        if not p["opened"]:
            lines.append(f"{p['name']} ({p['port']}): {p['last_error']}")
            status, fix = "fail", str(p["fix"])
        elif p["bytes"] == 0:
            lines.append(f"{p['name']} ({p['port']}): open, but no data in {seconds:.0f}s")
            if status == "pass":
                status, fix = "warn", "check the sensor is powered and wired (TX->RX) and sending"
        elif p["readings"] == 0:
            lines.append(f"{p['name']}: {p['bytes']} bytes, nothing parses as {p['protocol']} "
                         f"({p['last_error']})")
            if status != "fail":
                status, fix = "fail", (f"wrong baud rate ({p['baud']}?) or protocol; garbage or "
                                       "non-UTF-8 bytes usually mean the baud rate")
        else:
            latest = ", ".join(f"{k}={v:g}" for k, v in list((p["latest"] or {}).items())[:4])
            lines.append(f"{p['name']}: {p['readings']} readings, {p['parse_errors']} errors "
                         f"({latest})")
            if p["parse_errors"] > p["readings"] and status == "pass":
                status, fix = "warn", "many frames fail to parse: check baud rate and wiring noise"
    return CheckResult("sensors", status, "; ".join(lines), fix, details)


def check_model(cfg: AgentConfig) -> CheckResult:
    from agent.diag.golden import run_golden
    from agent.inference.model import load_model

    try:
        model = load_model(cfg.model.path, num_threads=1, delegate=cfg.model.delegate,
                           labels=cfg.model.labels)
    except AgentError as exc:
        return CheckResult("model", "fail", exc.message, exc.fix or "check [model] path")
    m = model.manifest
    details: dict[str, Any] = {"path": str(model.path), "sha256": m.sha256, "task": m.task,
                               "runtime": model.runtime, "delegate": cfg.model.delegate}
    outcome = run_golden(model)
    details["self_test"] = outcome
    where = f"{m.name} {m.version} ({m.task}, sha256 {m.sha256[:12]}...)"
    if outcome["status"] == "fail":
        return CheckResult("model", "fail", f"{where}: golden self-test failed: {outcome['reason']}",
                           "re-copy the bundle; if it persists try [model] delegate = \"none\"",
                           details)
    if outcome["status"] == "none":
        return CheckResult("model", "warn", f"{where} loads and runs; the manifest has no golden "
                           "input to check its output", "add a 'golden' entry to manifest.json",
                           details)
    return CheckResult("model", "pass", f"{where}: golden self-test matches", details=details)


def _tls_expiry(host: str, port: int, ca_file: Path | None, cert_file: Path | None = None,
                key_file: Path | None = None) -> float:
    from agent.sync.mqtt import tls_context

    context = tls_context(ca_file, cert_file, key_file)
    with socket.create_connection((host, port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        cert = tls.getpeercert()
    not_after = ssl.cert_time_to_seconds(str(cert["notAfter"])) if cert else time.time()
    return (not_after - time.time()) / 86400


def check_broker(cfg: AgentConfig, secrets: Secrets) -> CheckResult:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from agent.core.contract.topics import DeviceTopics
    from agent.core.uri import parse_broker

    if not cfg.mqtt.broker:
        return CheckResult("broker", "warn", "no broker configured: results stay in the outbox",
                           "set [mqtt] broker = \"mqtts://host:8883\"")
    broker = parse_broker(cfg.mqtt.broker)
    details: dict[str, Any] = {"url": broker.raw}
    try:
        socket.create_connection((broker.host, broker.port), timeout=3).close()
    except OSError as exc:
        return CheckResult("broker", "fail", f"cannot reach {broker.host}:{broker.port}: {exc}",
                           "check the network, DNS, firewall, and that the broker runs", details)
    if broker.tls:
        try:
            days = _tls_expiry(broker.host, broker.port, cfg.mqtt.tls_ca_file,
                               cfg.mqtt.tls_cert_file, secrets.tls_key_file)
        except AgentError as exc:  # our own files: a missing key, CA or certificate
            return CheckResult("broker", "fail", exc.message, exc.fix or "", details)
        except ssl.SSLCertVerificationError as exc:
            return CheckResult("broker", "fail", f"{broker.raw}'s certificate does not verify: "
                               f"{exc.verify_message or exc}", "check [mqtt] tls_ca_file is the "
                               "CA that signed the broker's certificate, and the board's clock "
                               "(a certificate not yet valid or expired fails too)", details)
        except (ssl.SSLError, OSError) as exc:
            return CheckResult("broker", "fail", f"TLS handshake with {broker.raw} failed: {exc}",
                               "check the port is the broker's TLS listener and, with mutual "
                               "TLS, that the broker accepts this device's certificate", details)
        details["certificate_days_left"] = round(days, 1)
        if days < 0:
            return CheckResult("broker", "fail", "the broker's certificate has expired",
                               "renew the broker certificate (or fix this board's clock)", details)
    topic = DeviceTopics(cfg.agent.site, cfg.agent.device_id).base + "/diag"
    done, result = threading.Event(), {"connect": None, "puback": None}
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5,
                         client_id=f"lepton-diag-{cfg.agent.device_id}-{os.getpid()}")
    if cfg.mqtt.username:
        client.username_pw_set(cfg.mqtt.username, secrets.mqtt_password)
    if broker.tls:
        from agent.sync.mqtt import tls_context

        client.tls_set_context(tls_context(cfg.mqtt.tls_ca_file, cfg.mqtt.tls_cert_file,
                                           secrets.tls_key_file))

    def on_connect(c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
        result["connect"] = reason
        if reason.is_failure:
            done.set()
        else:
            c.publish(topic, b'{"diag":true}', qos=1)

    def on_publish(c: Any, u: Any, mid: int, reason: Any, props: Any) -> None:
        result["puback"] = reason
        done.set()

    client.on_connect, client.on_publish = on_connect, on_publish
    try:
        client.connect(broker.host, broker.port, keepalive=10)
        client.loop_start()
        done.wait(8)
    except (OSError, ssl.SSLError) as exc:
        return CheckResult("broker", "fail", f"MQTT connect to {broker.raw} failed: {exc}",
                           "check the port speaks MQTT (1883) or MQTT over TLS (8883)", details)
    finally:
        client.loop_stop()
        client.disconnect()
    connect, puback = result["connect"], result["puback"]
    if connect is None:
        return CheckResult("broker", "fail", f"{broker.raw} did not answer CONNECT within 8s",
                           "check that the port is an MQTT listener", details)
    if connect.is_failure:
        return CheckResult("broker", "fail", f"{broker.raw} refused the connection: {connect}",
                           "check [mqtt] username and the password credential", details)
    if puback is None or puback.is_failure:
        return CheckResult("broker", "fail", f"publish on {topic} refused: {puback or 'no PUBACK'}",
                           "grant this device publish rights on lepton/v1/<site>/<device>/#",
                           details)
    if details.get("certificate_days_left", 99) < 30:
        return CheckResult("broker", "warn", f"connected; the certificate expires in "
                           f"{details['certificate_days_left']:.0f} days", "renew it", details)
    return CheckResult("broker", "pass", f"{broker.raw}: connected, publish on {topic} accepted",
                       details=details)


def check_cache(cfg: AgentConfig) -> CheckResult:
    from agent.storage.report import OutboxUnreadable, outbox_path, quarantined, read_report

    state = cfg.agent.state_dir
    details: dict[str, Any] = {"state_dir": str(state)}
    if not state.exists():
        return CheckResult("cache", "warn", f"state directory {state} does not exist yet",
                           "it is created at the first run; check [agent] state_dir", details)
    if not os.access(state, os.W_OK):
        return CheckResult("cache", "fail", f"state directory {state} is not writable",
                           "chown -R lepton: the directory (the service runs as 'lepton')", details)
    usage = shutil.disk_usage(state)
    details |= {"disk_free_bytes": usage.free, "disk_total_bytes": usage.total}
    backlog, oldest = 0, None
    try:
        report = read_report(state, cfg.outbox.delivery, integrity=True)
    except OutboxUnreadable as exc:
        return CheckResult("cache", "fail", f"outbox {outbox_path(state)} unreadable: "
                           f"{exc.__cause__ or exc}", exc.fix or "", details)
    if report is not None:
        if report.integrity != "ok":
            return CheckResult("cache", "fail", f"outbox {report.path} is corrupt: "
                               f"{report.integrity}", "restart the agent: it moves a corrupt "
                               "file aside and starts a fresh one", details)
        backlog, oldest = report.backlog, report.oldest_unsent_s
        details |= {"used_bytes": report.used_bytes, "budget_bytes": int(cfg.outbox.budget_bytes),
                    "evictions": {k: e.records for k, e in report.evictions.items()},
                    "blobs_waiting": report.blobs_waiting, "delivery": report.delivery}
    details |= {"backlog": backlog, "oldest_unsent_s": round(oldest) if oldest else None}
    moved = details["quarantined"] = [str(q) for q in quarantined(state)]
    free_pct = usage.free / usage.total * 100 if usage.total else 0
    summary = (f"outbox backlog {backlog}"
               + (f", oldest unsent {oldest / 3600:.1f} h" if oldest else "")
               + (f", {details['used_bytes'] / 2**20:.1f} of {details['budget_bytes'] / 2**20:.0f}"
                  " MiB budget" if "used_bytes" in details else "")
               + (f", evicted {sum(details['evictions'].values())} undelivered"
                  if details.get("evictions") else "")
               + f", {usage.free / 2**30:.1f} GiB free ({free_pct:.0f}%)")
    if moved:
        return CheckResult("cache", "warn", summary + f"; a corrupt outbox was moved aside: "
                           f"{moved[-1]}", "keep it for a support bundle (lepton-agent diag "
                           "bundle), then delete it; check the SD card (dmesg, badblocks)", details)
    if details.get("evictions"):
        return CheckResult("cache", "warn", summary, "the disk budget was too small for the "
                           "outage: raise [outbox] budget_bytes or fix the broker link", details)
    if usage.free < 50 * 2**20:
        return CheckResult("cache", "fail", summary, "free disk space on the state directory's "
                           "filesystem", details)
    if free_pct < 10 or (oldest and oldest > 3600):
        return CheckResult("cache", "warn", summary, "check the broker link (lepton-agent diag "
                           "broker) and free disk space", details)
    return CheckResult("cache", "pass", summary, details=details)


class _Timex(ctypes.Structure):
    _fields_ = [("modes", ctypes.c_uint), ("pad", ctypes.c_byte * 252)]


def clock_synchronized() -> bool | None:
    """True/False from the kernel's NTP state (adjtimex), None when it cannot tell."""
    timedatectl = shutil.which("timedatectl")
    if timedatectl:
        out = subprocess.run([timedatectl, "show", "-p", "NTPSynchronized", "--value"],
                             capture_output=True, text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip() in ("yes", "no"):
            return out.stdout.strip() == "yes"
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return None
    try:
        rc = ctypes.CDLL(libc_name, use_errno=True).adjtimex(ctypes.byref(_Timex()))
    except (OSError, AttributeError):
        return None
    return None if rc < 0 else rc != 5  # TIME_ERROR: not synchronized


def trusted_clock_skew(cfg: AgentConfig, device_now: float) -> tuple[float, float] | None:
    """(seconds the device clock lags trusted time, trusted time) from the OTA runtime's
    trusted clock (``ota/clock`` in outbox.db, read-only), or None when the device has not
    learned a time from a signed document (or the state cannot be read)."""
    from agent.core.ota.clock import TrustedClock
    from agent.storage.report import OutboxUnreadable, read_state

    try:
        text = read_state(cfg.agent.state_dir, "ota/clock")
        clock = TrustedClock.from_json(text) if text else None
    except (OutboxUnreadable, ValueError):
        return None
    if clock is None or clock.learned <= 0:
        return None
    skew = clock.skew(device_now, cfg.ota.clock_skew_threshold_s)
    return skew.seconds, device_now + skew.seconds


def check_clock(cfg: AgentConfig) -> CheckResult:
    now = datetime.now(timezone.utc)
    if now.year < 2025:
        return CheckResult("clock", "fail", f"the clock says {now:%Y-%m-%d}",
                           "enable NTP (timedatectl set-ntp true) or fit an RTC; TLS and "
                           "timestamps need real time")
    threshold = cfg.ota.clock_skew_threshold_s
    skew = trusted_clock_skew(cfg, now.timestamp())
    if skew is not None and skew[0] > threshold:
        trusted = datetime.fromtimestamp(skew[1], timezone.utc)
        return CheckResult(
            "clock", "fail", f"{now:%Y-%m-%d %H:%M:%S}Z is {skew[0]:.0f}s behind trusted time "
            f"({trusted:%Y-%m-%d %H:%M:%S}Z, from the newest signed model document; "
            f"threshold {threshold:.0f}s)",
            "set the clock right: enable NTP (timedatectl set-ntp true) or replace the RTC "
            "battery; result timestamps are that far off. A clock that once jumped ahead and "
            "came back keeps trusted time ahead until the OTA state is reset (docs/ota.md)",
            {"skew_s": round(skew[0], 1), "threshold_s": threshold})
    synced = clock_synchronized()
    if synced is None:
        return CheckResult("clock", "warn", f"{now:%Y-%m-%d %H:%M:%S}Z; cannot tell if synchronized",
                           "check timedatectl / chronyc tracking")
    if not synced:
        return CheckResult("clock", "warn", f"{now:%Y-%m-%d %H:%M:%S}Z, not NTP-synchronized",
                           "timedatectl set-ntp true; check that UDP 123 reaches a time server")
    return CheckResult("clock", "pass", f"{now:%Y-%m-%d %H:%M:%S}Z, NTP-synchronized")


def check_temperature(cfg: AgentConfig) -> CheckResult:
    from agent.sources.thermal import SysfsThermal

    reading = SysfsThermal(cfg.thermal.sysfs).read()
    details = {"temp_c": reading.temp_c, "throttled": reading.throttled}
    if reading.temp_c is None:  # a dev machine or VM: nothing to act on, so no warning
        return CheckResult("temperature", "skip", f"no CPU thermal sensor under "
                           f"{cfg.thermal.sysfs}/class/thermal (not a Pi or Jetson?)",
                           details=details)
    text = f"CPU {reading.temp_c:.1f} C"
    if reading.throttled:
        return CheckResult("temperature", "warn", text + ", firmware reports throttling",
                           "improve cooling; on a Pi check the power supply (under-voltage)",
                           details)
    if reading.temp_c >= cfg.thermal.max_temp_c:
        return CheckResult("temperature", "warn", text + f" (limit {cfg.thermal.max_temp_c:.0f})",
                           "add a heatsink/fan; the agent slows inference until it cools",
                           details)
    return CheckResult("temperature", "pass", text, details=details)


def check_memory(cfg: AgentConfig, meminfo: Path = Path("/proc/meminfo")) -> CheckResult:
    try:
        fields = dict(line.split(":", 1) for line in meminfo.read_text().splitlines() if ":" in line)
        available = int(fields["MemAvailable"].split()[0]) * 1024
        total = int(fields["MemTotal"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return CheckResult("memory", "warn", f"cannot read {meminfo}", "not a Linux /proc?")
    text = f"{available / 2**20:.0f} MiB available of {total / 2**20:.0f} MiB"
    details = {"available_bytes": available, "total_bytes": total}
    if available < 50 * 2**20:
        return CheckResult("memory", "fail", text, "stop other services or use a smaller model",
                           details)
    if available < 150 * 2**20:
        return CheckResult("memory", "warn", text, "free memory: other services, or a smaller "
                           "model / queue", details)
    return CheckResult("memory", "pass", text, details=details)


# Checks that read nothing from the config: they still run when the config does not load.
CONFIG_FREE = ("kernels", "clock", "memory")


def all_checks(cfg: AgentConfig, secrets: Secrets, snapshot: Path | None) -> dict[str, Check]:
    from agent.diag.kernels import check_kernels
    from agent.diag.pipelines import check_pipelines
    from agent.diag.storage import check_storage

    return {
        "camera": lambda: check_camera(cfg, snapshot),
        "sensors": lambda: check_sensors(cfg),
        "model": lambda: check_model(cfg),
        "pipelines": lambda: check_pipelines(cfg),
        "kernels": check_kernels,
        "broker": lambda: check_broker(cfg, secrets),
        "cache": lambda: check_cache(cfg),
        "storage": lambda: check_storage(cfg),
        "clock": lambda: check_clock(cfg),
        "temperature": lambda: check_temperature(cfg),
        "memory": lambda: check_memory(cfg),
    }
