"""`lepton-agent ctl`: send one command to a device and print its reply; `bench commands`: the
command round trip on loopback (docs/commands.md)."""

from __future__ import annotations

import argparse
import json
import math
import secrets
import socket
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from agent.cli.common import positive
from agent.errors import AgentError, ConfigError

EXIT_ERROR_REPLY = 1  # the device answered with an error
EXIT_NO_REPLY = 3  # no broker, or no reply in time (2 is bad input, as for every command)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``ctl`` and its flags to the subcommands."""
    ctl = sub.add_parser(
        "ctl", help="send a command to a device and print its reply",
        description="Send COMMAND to DEVICE and wait for its reply. ARGS are key=value (a value "
                    "that parses as JSON is taken as JSON, else as a string). Exit status: 0 ok, "
                    "1 the device answered with an error, 2 bad input, 3 no reply.")
    ctl.add_argument("--broker", required=True, help="mqtt://host:port or mqtts://host:port")
    ctl.add_argument("--site", default="default", help="the device's site (default: default)")
    ctl.add_argument("device", metavar="DEVICE")
    ctl.add_argument("name", metavar="COMMAND",
                     help="ping, get-config, set-config, pipelines, assign, unassign, snapshot, "
                          "restart-pipeline, diag")
    ctl.add_argument("pairs", nargs="*", metavar="ARGS", help="key=value arguments")
    ctl.add_argument("--args", dest="args_json", metavar="JSON",
                     help="the arguments as one JSON object (key=value pairs go over it)")
    ctl.add_argument("--file", type=Path, help="set-config: the TOML document to send")
    ctl.add_argument("--id", dest="command_id", help="the command id (default: a new UUID); "
                     "the same id again gets the stored outcome")
    ctl.add_argument("--timeout", type=positive(float), default=30.0,
                     help="seconds to wait for the reply (default 30)")
    ctl.add_argument("--json", action="store_true", help="print the whole reply as JSON")
    ctl.add_argument("--username")
    ctl.add_argument("--ca", type=Path, help="mqtts: the CA that signed the broker's certificate")
    ctl.add_argument("--cert", type=Path, help="mqtts: this client's certificate (mutual TLS)")
    ctl.add_argument("--key", type=Path, help="mqtts: this client's key (mutual TLS)")
    ctl.set_defaults(func=cmd_ctl)


def add_bench_parser(bench: argparse.ArgumentParser) -> None:
    """Add ``bench commands`` to the ``bench`` command's subcommands."""
    for action in bench._actions:
        if isinstance(action, argparse._SubParsersAction):
            b = action.add_parser("commands", help="command round trip on loopback (ping)")
            b.add_argument("--count", type=positive(int), default=300)
            b.add_argument("--json", action="store_true")
            b.set_defaults(func=cmd_bench_commands)
            return


def parse_args_pairs(pairs: list[str], args_json: str | None) -> dict[str, Any]:
    """The command's arguments from ``--args`` and ``key=value`` pairs; ConfigError when bad."""
    args: dict[str, Any] = {}
    if args_json is not None:
        try:
            parsed = json.loads(args_json)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"not JSON: {exc}", key="--args",
                              fix="give one JSON object, e.g. '{\"stream\": \"cam1\"}'") from None
        if not isinstance(parsed, dict):
            raise ConfigError("not a JSON object", key="--args",
                              fix="give one JSON object, e.g. '{\"stream\": \"cam1\"}'")
        args.update(parsed)
    for pair in pairs:
        key, eq, text = pair.partition("=")
        if not eq or not key:
            raise ConfigError(f"{pair!r} is not key=value", key="ARGS",
                              fix="write each argument as key=value, e.g. stream=cam1")
        try:
            args[key] = json.loads(text)
        except json.JSONDecodeError:
            args[key] = text
    return args


class CommandClient:
    """One MQTT 5 connection that sends commands and waits for their replies by correlation
    data, on a response topic of its own below the device's ``reply``."""

    def __init__(self, broker: str, *, username: str | None = None, password: str | None = None,
                 ca: Path | None = None, cert: Path | None = None, key: Path | None = None,
                 timeout: float = 10.0) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        from agent.core.uri import parse_broker
        from agent.sync.mqtt import tls_context

        url = parse_broker(broker)
        self.session = secrets.token_hex(8)
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"lepton-ctl-{self.session}",
                                  protocol=paho.MQTTv5)
        if username:
            self.client.username_pw_set(username, password)
        if url.tls:
            self.client.tls_set_context(tls_context(ca, cert, key))
        self._lock = threading.Lock()
        self._waiting: dict[bytes, tuple[threading.Event, list[bytes]]] = {}
        self._subscribed: set[str] = set()
        self._suback = threading.Event()
        self._connected = threading.Event()
        self._refused: str | None = None
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._suback.set()
        try:
            self.client.connect(url.host, url.port, keepalive=30)
        except (OSError, ValueError) as exc:
            raise NoReply(f"cannot connect to {broker}: {exc}") from None
        sock = self.client.socket()
        if isinstance(sock, socket.socket):  # paho leaves Nagle on: a reply waits 40 ms more
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.loop_start()
        if not self._connected.wait(timeout) or self._refused:
            self.close()
            raise NoReply(f"broker {broker} " + (f"refused the connection: {self._refused}"
                                                 if self._refused else
                                                 f"did not answer within {timeout:g}s"))

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            self._refused = str(reason)
        self._connected.set()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        correlation = getattr(message.properties, "CorrelationData", None)
        if correlation is None:
            return
        with self._lock:
            waiter = self._waiting.get(bytes(correlation))
        if waiter is not None:
            waiter[1].append(bytes(message.payload))
            waiter[0].set()

    def reply_topic(self, site: str, device: str) -> str:
        from agent.core.contract.command import reply_topic
        from agent.core.contract.topics import DeviceTopics

        return reply_topic(DeviceTopics(site, device), self.session)

    def _subscribe(self, topic: str, timeout: float) -> None:
        if topic in self._subscribed:
            return
        self._suback.clear()
        self.client.subscribe(topic, qos=1)
        if not self._suback.wait(timeout):
            raise NoReply(f"the broker did not confirm the subscription to {topic}")
        self._subscribed.add(topic)

    def send_raw(self, site: str, device: str, name: str, payload: bytes, timeout: float,
                 *, correlation: bytes | None = None, retain: bool = False) -> bytes | None:
        """Publish ``payload`` on the command topic and wait for the reply's payload (None after
        ``timeout``)."""
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        from agent.core.contract.topics import DeviceTopics

        response = self.reply_topic(site, device)
        self._subscribe(response, timeout)
        correlation = correlation or secrets.token_bytes(16)
        event = threading.Event()
        box: list[bytes] = []
        with self._lock:
            self._waiting[correlation] = (event, box)
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = response
        props.CorrelationData = correlation
        # The broker drops a command it could not deliver before the sender stopped waiting.
        props.MessageExpiryInterval = max(1, math.ceil(timeout))
        self.client.publish(f"{DeviceTopics(site, device).base}/cmd/{name}", payload, qos=1,
                            retain=retain, properties=props)
        try:
            event.wait(timeout)
        finally:
            with self._lock:
                self._waiting.pop(correlation, None)
        return box[0] if box else None

    def send(self, site: str, device: str, name: str, args: dict[str, Any], timeout: float,
             command_id: str | None = None) -> Any:
        """Send command ``name`` and return its decoded reply (NoReply after ``timeout``)."""
        from agent.core.contract.command import decode_reply, encode_command

        payload = encode_command(command_id or str(uuid.uuid4()), args)
        raw = self.send_raw(site, device, name, payload, timeout)
        if raw is None:
            raise NoReply(f"no reply from {device} (site {site}) within {timeout:g}s: is it "
                          "running and connected to this broker?")
        return decode_reply(raw)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class NoReply(AgentError):
    """No broker, or no reply in time."""


def cmd_ctl(args: argparse.Namespace) -> int:
    from agent.core.contract.command import check_name
    from agent.core.contract.topics import check_segment

    try:
        check_segment("site", args.site)
        check_segment("device", args.device)
        check_name(args.name)
    except ValueError as exc:
        raise ConfigError(str(exc), fix="check the device, site and command names") from None
    command_args = parse_args_pairs(args.pairs, args.args_json)
    if args.file is not None:
        try:
            command_args["toml"] = args.file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {args.file}: {exc}", key="--file") from None
    if args.command_id is not None:
        from agent.core.contract.command import encode_command

        try:
            encode_command(args.command_id)
        except ValueError as exc:
            raise ConfigError(str(exc), key="--id", fix="use a UUID") from None
    import os

    try:
        client = CommandClient(args.broker, username=args.username,
                               password=os.environ.get("LEPTON_CTL_PASSWORD"), ca=args.ca,
                               cert=args.cert, key=args.key, timeout=min(args.timeout, 10.0))
    except NoReply as exc:
        print(f"lepton-agent: error: {exc}", file=sys.stderr)
        return EXIT_NO_REPLY
    try:
        reply = client.send(args.site, args.device, args.name, command_args, args.timeout,
                            args.command_id)
    except NoReply as exc:
        print(f"lepton-agent: error: {exc}", file=sys.stderr)
        return EXIT_NO_REPLY
    except ValueError as exc:
        print(f"lepton-agent: error: the reply is malformed: {exc}", file=sys.stderr)
        return EXIT_NO_REPLY
    finally:
        client.close()
    if args.json:
        print(json.dumps(reply.to_json(), indent=2))
    elif reply.ok:
        result = reply.result or {}
        if args.name == "get-config" and isinstance(result.get("toml"), str):
            print(f"# config version {result.get('version')}\n{result['toml']}", end="")
        else:
            print(json.dumps(result, indent=2))
    if reply.replay and not args.json:
        print(f"(replay: the stored outcome of {reply.id}; nothing was done again)",
              file=sys.stderr)
    if reply.ok:
        return 0
    if not args.json:
        print(f"lepton-agent: {args.name} failed: {reply.code}: {reply.reason}"
              + (f" (fix: {reply.fix})" if reply.fix else ""), file=sys.stderr)
    return EXIT_ERROR_REPLY


def bench_commands(count: int) -> dict[str, Any]:
    """``count`` pings, one after another, from a client to a real agent through a private
    mosquitto on loopback: the round trip from publish to reply, in ms; with mosquitto as
    configured by default, and with its ``set_tcp_nodelay true``."""
    report: dict[str, Any] = {"commands": count, "command": "ping"}
    report["command_rtt_ms"] = _bench_round_trips(count, broker_nodelay=False)
    report["command_rtt_ms_broker_nodelay"] = _bench_round_trips(count, broker_nodelay=True)
    report["note"] = (
        "sequential pings, client -> mosquitto -> agent -> mosquitto -> client on 127.0.0.1, "
        "each outcome committed to outbox.db; the agent runs one pipeline (synthetic 320x240 "
        "at 5 fps). mosquitto leaves Nagle on by default (set_tcp_nodelay false): each small "
        "message it forwards may wait for the peer's delayed ACK (40 ms on Linux); the "
        "agent's link and ctl's client turn it off on their own sockets")
    return report


def _bench_round_trips(count: int, *, broker_nodelay: bool) -> dict[str, float]:
    import tempfile

    from agent.devtools.mosquitto import LocalBroker
    from agent.devtools.rig import AgentProcess, write_agent_config

    with tempfile.TemporaryDirectory(prefix="lepton-bench-commands-") as tmp:
        work = Path(tmp)
        broker = LocalBroker(work / "broker")
        if broker_nodelay:
            broker.conf.write_text(broker.conf.read_text() + "set_tcp_nodelay true\n")
        broker.start()
        agent: AgentProcess | None = None
        client: CommandClient | None = None
        try:
            config = write_agent_config(work / "agent.toml", device_id="bench", site="bench",
                                        state_dir=work / "state", broker_url=broker.url)
            agent = AgentProcess(config, "--source", "synthetic://320x240@5").start()
            client = CommandClient(broker.url)
            deadline = time.monotonic() + 60
            while True:  # the agent is up once it answers
                try:
                    client.send("bench", "bench", "ping", {}, 2.0)
                    break
                except NoReply:
                    if time.monotonic() > deadline or not agent.running:
                        raise AgentError(f"the agent did not answer a ping within 60 s:\n"
                                         f"{agent.log[-2000:]}") from None
            rtts = []
            for _ in range(count):
                t0 = time.perf_counter()
                reply = client.send("bench", "bench", "ping", {}, 10.0)
                rtts.append((time.perf_counter() - t0) * 1e3)
                if not reply.ok:
                    raise AgentError(f"ping failed: {reply.reason}")
            rtts.sort()
            return {"p50": round(statistics.median(rtts), 3),
                    "p99": round(rtts[min(len(rtts) - 1, math.ceil(0.99 * len(rtts)) - 1)], 3),
                    "max": round(rtts[-1], 3), "mean": round(statistics.fmean(rtts), 3)}
        finally:
            if client is not None:
                client.close()
            if agent is not None and agent.running:
                agent.kill()
            broker.close()


def cmd_bench_commands(args: argparse.Namespace) -> int:
    report = bench_commands(args.count)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key in ("command_rtt_ms", "command_rtt_ms_broker_nodelay"):
            r = report[key]
            print(f"{report['commands']} pings: {key} p50 {r['p50']}, p99 {r['p99']}, "
                  f"max {r['max']}")
    return 0
