"""``lepton-agent bench ingest``: how many records a second ingest stores, against the limit of a
Python MQTT consumer, on one private mosquitto in one run.

- ``raw_subscriber_per_s``: a paho subscriber that only parses each message's JSON and PUBACKs
  it (manual acks, as ingest), the most a Python consumer of this broker takes;
- ``sqlite_per_s``, ``postgresql_per_s``: ``lepton-agent ingest`` (a real process) into each
  store.

Each consumer is measured on a queue the broker already holds: its persistent session
subscribes, goes away, ``records`` simulator records (``lepton.result`` from the contract's
encoder, many devices) are published, and the consumer comes back. Its rate is the records
taken from the first to the last, so neither the publisher's speed nor the start of a process
counts. ``processes``: the same with N ingest processes on one shared subscription (one with
the same shared subscription is measured beside it). ``overload``: the fleet simulator offers
``overload`` times the measured SQLite rate for ``seconds`` to ingest on a broker with the
reference limits of docs/broker/ingest.conf; the report has what was offered, stored, lost,
stored twice, and the time from the end of the burst until every record was stored.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.core.contract.topics import DeviceTopics
from agent.core.uri import parse_broker
from agent.devtools.mosquitto import LocalBroker
from agent.devtools.rig import IngestProcess
from agent.devtools.simulate import (
    STREAM,
    FleetOptions,
    FleetReport,
    VirtualDevice,
    run_fleet,
    store_reader,
)
from agent.errors import AgentError

PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
SUBSCRIPTION = "lepton/v1/+/+/results/+"
REFERENCE_CONF = Path(__file__).resolve().parents[2] / "docs" / "broker" / "ingest.conf"


def make_messages(records: int, devices: int = 20, site: str = "bench") -> list[tuple[str, bytes]]:
    """``records`` result records spread over ``devices`` simulator devices (topic, payload)."""
    fleet = FleetOptions(devices=devices, rate=1, seconds=1, site=site)
    out: list[tuple[str, bytes]] = []
    devs = [VirtualDevice(f"b-{n:04d}", DeviceTopics(site, f"b-{n:04d}"), fleet,
                          random.Random(n), FleetReport(devices)) for n in range(devices)]
    wall = 1.79e9
    for i in range(records):
        dev = devs[i % devices]
        dev.make_record(wall + i / 1000)
    for dev in devs:
        topic = dev.topics.results(STREAM)
        out.extend((topic, r.payload) for r in dev.unsent.values())
    random.Random(0).shuffle(out)
    return out


def publish_all(port: int, messages: list[tuple[str, bytes]]) -> None:
    """QoS 1 publishes until the broker has PUBACKed every one."""
    done = threading.Event()
    left = [len(messages)]

    def on_publish(client: paho.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        left[0] -= 1
        if left[0] == 0:
            done.set()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{uuid.uuid4().hex[:6]}",
                         protocol=paho.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for topic, payload in messages:
            client.publish(topic, payload, qos=1)
        if not done.wait(600):
            raise AgentError(f"the broker took {len(messages) - left[0]} of {len(messages)} "
                             "records within 600 s")
    finally:
        client.loop_stop()
        client.disconnect()


def _connect_props() -> Properties:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    return props


def drop_session(port: int, client_id: str) -> None:
    """End a persistent session the broker keeps for ``client_id``: an orphan session goes on
    collecting copies of every message (and, in a shared group, its share of them)."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    client.connect("127.0.0.1", port, clean_start=True)
    client.loop_start()
    deadline = time.monotonic() + 10
    while not client.is_connected() and time.monotonic() < deadline:
        time.sleep(0.01)
    client.disconnect()
    client.loop_stop()


def raw_subscriber_rate(port: int, messages: list[tuple[str, bytes]]) -> float:
    """Records/s of a paho subscriber that parses each payload's JSON and PUBACKs it."""
    n = len(messages)
    cid = f"bench-raw-{uuid.uuid4().hex[:6]}"
    subscribed = threading.Event()
    done = threading.Event()
    times: list[float] = []
    count = [0]

    def on_subscribe(client: paho.Client, *args: Any) -> None:
        subscribed.set()

    def on_message(client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        json.loads(msg.payload)
        client.ack(msg.mid, msg.qos)
        count[0] += 1
        if count[0] == 1:
            times.append(time.perf_counter())
        if count[0] == n:
            times.append(time.perf_counter())
            done.set()

    def client() -> paho.Client:
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=paho.MQTTv5,
                        manual_ack=True)
        c.on_subscribe = on_subscribe
        c.on_message = on_message
        c.connect("127.0.0.1", port, clean_start=False, properties=_connect_props())
        return c

    first = client()
    first.loop_start()
    first.subscribe(SUBSCRIPTION, qos=1)
    if not subscribed.wait(10):
        raise AgentError("the raw subscriber's SUBSCRIBE was not acknowledged")
    first.disconnect()
    first.loop_stop()
    publish_all(port, messages)
    second = client()
    second.loop_start()
    try:
        if not done.wait(600):
            raise AgentError(f"the raw subscriber took {count[0]} of {n} records in 600 s")
    finally:
        second.disconnect()
        second.loop_stop()
        drop_session(port, cid)
    return (n - 1) / max(times[1] - times[0], 1e-9)


class _Counter:
    """Counts the records of a store, read with the database's own client."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        if db_url.startswith("sqlite:///"):
            self.ingest_db: Path | None = Path(db_url[len("sqlite:///"):])
            self.pg: Any = None
        else:
            import psycopg

            base, _, self.schema = db_url.partition("?schema=")
            self.ingest_db = None
            self.pg = psycopg.connect(base, autocommit=True)

    def __call__(self) -> int:
        if self.ingest_db is not None:
            if not self.ingest_db.exists():
                return 0
            with sqlite3.connect(self.ingest_db, timeout=10) as conn:
                try:
                    return int(conn.execute("SELECT COUNT(*) FROM records").fetchone()[0])
                except sqlite3.OperationalError:
                    return 0
        try:
            row = self.pg.execute(f'SELECT COUNT(*) FROM "{self.schema}".records').fetchone()
        except Exception:  # the table is created by ingest's first start
            return 0
        return int(row[0])

    def close(self) -> None:
        if self.pg is not None:
            self.pg.close()


def _cpu_busy_idle() -> tuple[float, float]:
    """Seconds all CPUs of the machine spent busy and idle since boot (/proc/stat)."""
    try:
        fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return (sum(fields[:8]) - idle) / tick, idle / tick


def ingest_rate(broker: LocalBroker, messages: list[tuple[str, bytes]], db_url: str,
                workdir: Path, processes: int = 1, group: str = "",
                flags: tuple[str, ...] = (), idle: list[float] | None = None) -> float:
    """Records/s of ``processes`` ingest processes taking ``messages`` the broker already
    holds for them, from the first message one received to the last commit of any."""
    n = len(messages)
    tag = uuid.uuid4().hex[:6]
    procs = [IngestProcess(broker.url, workdir / f"ingest-{tag}-{i}.db", *flags, db_url=db_url,
                           client_id=f"bench-ingest-{tag}-{i}", group=group,
                           log_level="warning") for i in range(processes)]
    counter = _Counter(db_url)
    try:
        # Every process connected and subscribed, then frozen (SIGSTOP) while the records are
        # published, then all let go at once: none starts ahead of the others (a process
        # takes 1-3 s to start on this machine, as long as the whole run), the publisher
        # takes no CPU from them, and the broker already holds the queue.
        for p in procs:
            p.start()
        for p in procs:
            p.send(signal.SIGSTOP)
        publish_all(broker.port, messages)
        busy0, idle0 = _cpu_busy_idle()
        for p in procs:
            p.send(signal.SIGCONT)
        deadline = time.monotonic() + 600
        while (stored := counter()) < n:
            if time.monotonic() > deadline:
                raise AgentError(f"ingest stored {stored} of {n} records in 600 s: "
                                 + " | ".join(p.log[-300:] for p in procs))
            time.sleep(0.05)  # the clock is ingest's own: polling slower costs no accuracy
        busy1, idle1 = _cpu_busy_idle()
        if idle is not None and busy1 + idle1 > busy0 + idle0:
            # CPUs left idle during the run, in cores: near 0, a second process has nothing
            # to run on (the machine is shared), whatever ingest does.
            idle.append((idle1 - idle0) / (busy1 + idle1 - busy0 - idle0) * (os.cpu_count() or 1))
        stats = [p.stop() for p in procs]
        # From the first message any process received to the last commit of any: neither the
        # start-up of a process nor this polling counts (a large window stores the queue in a
        # few commits, so the time to the first message matters).
        first = min(s["first_received_at"] for s in stats if s.get("first_received_at"))
        last = max(s["last_commit_at"] for s in stats if s.get("last_commit_at"))
        return float(n / max(last - first, 1e-3))
    finally:
        for p in procs:
            if p.running:
                p.stop()
        for i in range(processes):
            drop_session(broker.port, f"bench-ingest-{tag}-{i}")
        counter.close()


def pg_schema(server: str) -> tuple[str, Callable[[], None]] | None:
    """A fresh schema on ``server`` and how to drop it; None when the server is unreachable."""
    try:
        import psycopg

        admin = psycopg.connect(server, autocommit=True, connect_timeout=5)
    except Exception:
        return None
    schema = f"lepton_bench_{uuid.uuid4().hex[:8]}"

    def drop() -> None:
        admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.close()

    return f"{server}?schema={schema}", drop


def reference_broker(workdir: Path) -> LocalBroker:
    """A private mosquitto with the limits of docs/broker/ingest.conf added to its config
    (later lines win in mosquitto's config)."""
    broker = LocalBroker(workdir)
    limits = [line for line in REFERENCE_CONF.read_text().splitlines()
              if line.strip() and not line.startswith("#")
              and line.split()[0] in ("max_queued_messages", "max_queued_bytes",
                                      "max_inflight_messages", "max_inflight_bytes")]
    broker.conf.write_text(broker.conf.read_text() + "\n".join(limits) + "\n")
    return broker


def overload_run(db_url: str, workdir: Path, capacity: float, factor: float, seconds: float,
                 devices: int = 50) -> dict[str, Any]:
    """The simulator offers ``factor`` x the capacity of ingest fed by the simulator on this
    machine (both share its CPUs: ``capacity``, ingest's rate alone, only sizes the calibration)
    for ``seconds``, to one ingest process on a broker with the reference limits."""
    with reference_broker(workdir / "overload-broker") as broker:
        proc = IngestProcess(broker.url, workdir / "overload.db", db_url=db_url,
                             log_level="warning").start()
        counter = _Counter(db_url)
        try:
            # Calibration: the devices make and publish records at ingest's solo rate for 5 s;
            # what was stored over the time until the last ack is what the pair takes. (A
            # backlog made before the start leaves out the cost of making the records: the
            # first version measured 15,716/s that way and then offered 31,861/s while ingest,
            # starved by the simulator, stored 368/s.)
            calibrate = FleetOptions(devices=devices, rate=max(capacity / devices, 0.2),
                                     seconds=5.0, site="calibrate", prefix="cal",
                                     ack_timeout_s=30.0, drain_s=300.0)
            cal: FleetReport = asyncio.run(run_fleet(parse_broker(broker.url), calibrate))
            live = cal.acknowledged / max(cal.offer_s + (cal.catch_up_s or calibrate.drain_s),
                                          1e-3)
            rate = factor * live / devices
            options = FleetOptions(devices=devices, rate=rate, seconds=seconds, site="overload",
                                   ack_timeout_s=5.0, ack_timeout_max_s=60.0,
                                   drain_s=max(120.0, seconds * factor * 2))
            before = counter()
            in_burst: list[int] = []
            report: FleetReport = asyncio.run(run_fleet(
                parse_broker(broker.url), options, store_reader(db_url),
                on_offered=lambda r: in_burst.append(counter() - before)))
        finally:
            counter.close()
            stats = proc.stop() if proc.running else {}
    burst_per_s = in_burst[0] / max(report.offer_s, 1e-9) if in_burst else 0.0
    offered_per_s = report.offered / max(report.offer_s, 1e-9)
    return {"capacity_with_simulator_per_s": round(live), "target_per_s": round(factor * live),
            "devices": devices, "seconds": seconds,
            "offered": report.offered, "offered_per_s": round(offered_per_s),
            "stored_in_burst_per_s": round(burst_per_s),
            "burst_factor": round(offered_per_s / burst_per_s, 2) if burst_per_s else None,
            "stored": report.stored, "lost": report.lost,
            "duplicates_stored": report.duplicates_stored, "pending": report.pending,
            "catch_up_s": report.catch_up_s, "resent": report.resent,
            "duplicates_seen": report.duplicates_seen,
            "ingest_duplicates": stats.get("duplicates"), "ingest_received": stats.get("received")}


def bench_ingest(records: int = 20_000, pg_server: str = PG_DEFAULT, processes: int = 1,
                 overload: float = 0.0, seconds: float = 60.0, rounds: int = 3) -> dict[str, Any]:
    """The figures of one run (records/s and ratios to the raw subscriber)."""
    messages = make_messages(records)
    report: dict[str, Any] = {"records": records, "payload_bytes_mean": round(
        sum(len(p) for _, p in messages) / len(messages)), "cpus": os.cpu_count(),
        "load_1m": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory(prefix="lepton-bench-ingest-") as tmp:
        work = Path(tmp)
        with LocalBroker(work / "broker", persistence=False) as broker:
            # Interleaved rounds, medians: on a shared machine one phase alone moves +-30%.
            rates: dict[str, list[float]] = {"raw": [], "sqlite": [], "postgresql": []}
            pg_note = ""
            for r in range(rounds):
                rates["raw"].append(raw_subscriber_rate(broker.port, messages))
                rates["sqlite"].append(ingest_rate(broker, messages,
                                                   f"sqlite:///{work}/s{r}.db", work))
                pg = pg_schema(pg_server)
                if pg is None:
                    pg_note = f"no server at {pg_server}"
                    continue
                url, drop = pg
                try:
                    rates["postgresql"].append(ingest_rate(broker, messages, url, work))
                finally:
                    drop()
            report["rounds"] = rounds
            report["per_round"] = {k: [round(v) for v in vs] for k, vs in rates.items()}
            report["raw_subscriber_per_s"] = round(statistics.median(rates["raw"]))
            report["sqlite_per_s"] = round(statistics.median(rates["sqlite"]))
            report["postgresql_per_s"] = (round(statistics.median(rates["postgresql"]))
                                          if rates["postgresql"] else None)
            if pg_note:
                report["postgresql"] = pg_note
            raw = report["raw_subscriber_per_s"]
            report["sqlite_ratio"] = round(report["sqlite_per_s"] / raw, 3)
            if report["postgresql_per_s"]:
                report["postgresql_ratio"] = round(report["postgresql_per_s"] / raw, 3)
            if processes > 1:
                report["processes"] = _scale_out(broker, messages, work, processes, pg_server,
                                                 rounds)
        if overload:
            report["overload"] = overload_run(f"sqlite:///{work}/overload.db", work,
                                              report["sqlite_per_s"], overload, seconds)
    report["load_1m_after"] = round(os.getloadavg()[0], 2)
    return report


def _scale_out(broker: LocalBroker, messages: list[tuple[str, bytes]], work: Path,
               processes: int, pg_server: str, rounds: int) -> dict[str, Any]:
    """One process and N processes, each on the shared subscription, into PostgreSQL (SQLite
    when there is no server: its writers take turns), in interleaved rounds (medians)."""
    out: dict[str, Any] = {"n": processes}
    rates: dict[int, list[float]] = {1: [], processes: []}
    idle: dict[int, list[float]] = {1: [], processes: []}
    for _ in range(rounds):
        for n in (1, processes):
            pg = pg_schema(pg_server)
            if pg is None:
                out["store"] = "sqlite"
                rates[n].append(ingest_rate(broker, messages, f"sqlite:///{work}/scale{n}.db",
                                            work, processes=n, group="bench", idle=idle[n]))
                continue
            out["store"] = "postgresql"
            url, drop = pg
            try:
                rates[n].append(ingest_rate(broker, messages, url, work, processes=n,
                                            group="bench", idle=idle[n]))
            finally:
                drop()
    one, many = statistics.median(rates[1]), statistics.median(rates[processes])
    out["per_round"] = {"one": [round(r) for r in rates[1]],
                        "n": [round(r) for r in rates[processes]]}
    out["one_per_s"], out["n_per_s"] = round(one), round(many)
    out["ratio"] = round(many / one, 3)
    # The same ratio round by round (each round's two runs are minutes apart at most, so a
    # change in the machine's other load moves both less than it moves the medians).
    out["ratio_per_round"] = [round(b / a, 3) for a, b in zip(rates[1], rates[processes],
                                                              strict=True)]
    out["idle_cores"] = {"one": [round(c, 2) for c in idle[1]],
                         "n": [round(c, 2) for c in idle[processes]]}
    return out
