"""``lepton-agent bench sync``: the durable publish path against raw paho, and backlog drain.

Both against a private mosquitto on a free loopback port, measured in one run:

- **throughput**: raw paho QoS 1 publishes (paho's in-flight limit at the agent's window, no
  storage; also without the limit, for context) vs the agent's path: each record committed to
  the SQLite outbox, then published by the uplink and marked sent on PUBACK. Interleaved
  rounds, medians; also bytes written to disk per record.
- **disk writes**: bytes written to storage per record (``/proc/self/io`` write_bytes, the
  WAL, its fsyncs and the checkpoints included) against the payload (``write_amplification``),
  for the throughput run (100 records per commit) and for a live camera (``live``: 15 results
  a second committed every 50 ms, marked sent on each PUBACK, acknowledged by ingest and
  fsynced once a second, on a simulated clock so that it runs at full speed).
- **drain**: ``backlog`` records committed while the broker is down, then the broker returns
  while live records keep arriving at ``live_hz``: the drain rate, and the live records'
  commit-to-PUBACK latency during the drain against the same latency with no backlog.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from agent.config.schema import OutboxSection
from agent.core.contract.result import Detection, FrameResult, ModelRef, encode_result
from agent.core.outbox import PublishWindow
from agent.core.uri import parse_broker
from agent.devtools.mosquitto import LocalBroker
from agent.storage.outbox import Outbox, PendingRecord
from agent.sync.mqtt import LinkOptions, MqttLink
from agent.sync.uplink import Uplink

LABELS = ("car", "truck", "bus", "person", "bicycle")
MODEL = ModelRef("lepton-vehicles-tiny", "1.0.0",
                 "9f2c4e6a1b3d5f7081a2c4e6b8d0f1325476a8cadcfe1032547698badcfe1032")
WINDOW = 100
TOPIC = "lepton/v1/bench/dev/results/cam0"


def result_payload(seq: int, rng: random.Random) -> bytes:
    """A realistic ``lepton.result`` payload (0-4 detections with random boxes and scores,
    timings), not a constant: compression at rest must not flatter the figures."""
    dets = []
    for _ in range(rng.choice((0, 1, 1, 2, 2, 3, 4))):
        y, x = rng.random() * 0.8, rng.random() * 0.8
        k = rng.randrange(len(LABELS))
        dets.append(Detection(k, LABELS[k], rng.uniform(0.3, 0.99),
                              (y, x, y + rng.random() * 0.2, x + rng.random() * 0.2)))
    frame = FrameResult("cam0", seq, 1.79e9 + seq / 15, 123_456_789_000 + seq * 66_666_666,
                        640, 480, "detection", dets, latency_ms={
                            "preprocess": rng.uniform(1, 3), "invoke": rng.uniform(20, 40),
                            "postprocess": rng.uniform(0.1, 1)})
    return encode_result(frame, seq=seq, device="dev-0042", site="site-north", model=MODEL)


class Payloads:
    """Result payloads built on demand (as the agent builds them, from the seq), with the
    total of their sizes for the amplification figure."""

    def __init__(self, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.bytes = 0
        self.count = 0

    def __call__(self, seq: int) -> bytes:
        data = result_payload(seq, self.rng)
        self.bytes += len(data)
        self.count += 1
        return data


def _disk_writes() -> int:
    """Bytes this process has caused to be written to storage (Linux /proc/self/io)."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def raw_paho_rate(port: int, n: int, inflight: int = WINDOW) -> float:
    """Messages per second: n QoS 1 publishes, ``inflight`` in flight (paho's limit; 0: none),
    until the last PUBACK."""
    done = threading.Event()
    acked = 0

    def on_publish(client: paho.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        nonlocal acked
        acked += 1
        if acked == n:
            done.set()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw",
                         protocol=paho.MQTTv5)
    client.max_inflight_messages_set(inflight)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    payload = result_payload(1, random.Random(1))
    started = time.perf_counter()
    for _ in range(n):
        client.publish(TOPIC, payload, qos=1)
    done.wait(120)
    elapsed = time.perf_counter() - started
    client.loop_stop()
    client.disconnect()
    return n / elapsed


class _Durable:
    """The agent's uplink over a fresh outbox; records latency from commit to PUBACK."""

    def __init__(self, state: Path, url: str, loop: asyncio.AbstractEventLoop, name: str) -> None:
        self.outbox = Outbox(state / f"{name}.db", until_ingested=False)
        self.uplink = Uplink(self.outbox, PublishWindow(WINDOW))
        self.link = MqttLink(parse_broker(url), LinkOptions(
            client_id=f"bench-{name}", clean_start=True,
            reconnect_initial_s=0.05, reconnect_max_s=0.2), self.uplink, loop)
        self.uplink.attach(self.link)
        self.committed_at: dict[int, float] = {}
        self.latency_s: list[float] = []
        self.payloads = Payloads()

    def time_latency(self) -> None:
        """Take each timed record's latency at PUBACK (when the uplink counts it, not when the
        mark is flushed); only where latency is reported, so the rate runs unwrapped."""
        on_puback = self.uplink.on_puback

        def timed_puback(acked: list[int], rejected: list[tuple[int, str]]) -> None:
            ids = [r for m in acked if (r := self.uplink.window.in_flight.get(m)) is not None]
            now = time.perf_counter()
            for i in ids:
                t = self.committed_at.pop(i, None)
                if t is not None:
                    self.latency_s.append(now - t)
            on_puback(acked, rejected)

        self.uplink.on_puback = timed_puback  # type: ignore[method-assign]

    def commit(self, count: int, *, timed: bool = False) -> None:
        stored = self.outbox.append([PendingRecord("cam0", TOPIC, self.payloads)] * count)
        if timed:
            now = time.perf_counter()
            self.committed_at.update((r.id, now) for r in stored)
        self.uplink.committed(stored)

    async def wait_connected(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not self.link.connected and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def wait_acked(self, total: int, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while self.uplink.acked < total and time.monotonic() < deadline:
            await asyncio.sleep(0.002)

    async def aclose(self) -> None:
        await self.link.stop(2.0)
        self.outbox.close()


async def durable_rate(state: Path, url: str, n: int,
                       name: str) -> tuple[float, float, float]:
    """Records per second through commit -> publish -> PUBACK, disk bytes per record and
    payload bytes per record."""
    loop = asyncio.get_running_loop()
    durable = _Durable(state, url, loop, name)
    durable.link.start()
    await durable.wait_connected()
    writes = _disk_writes()
    started = time.perf_counter()
    batch = WINDOW
    for _ in range(n // batch):
        durable.commit(batch)
        await asyncio.sleep(0)  # let PUBACKs in, as the agent's loop does between commits
    await durable.wait_acked(n // batch * batch)
    durable.uplink.flush_sent()
    elapsed = time.perf_counter() - started
    durable.outbox.maybe_fsync(force=True)
    written = _disk_writes() - writes
    payload = durable.payloads.bytes / max(durable.payloads.count, 1)
    await durable.aclose()
    return n / elapsed, written / n, payload


def live_writes(state: Path, seconds: int = 120, fps: int = 15,
                commit_interval_ms: int | None = None) -> dict[str, Any]:
    """Disk bytes per record for a live camera as the agent runs it, on a simulated clock, with
    the agent's defaults (``[outbox]``: budget, delivery to ingest, durability interval,
    commit interval, keep_delivered): ``fps`` results a second committed every
    ``commit_interval_ms`` (the outbox writer; the WAL fsync is due inside the commit once a
    ``durability_interval_s``), each commit's records marked sent on their PUBACKs and
    acknowledged by ingest (which acks every batch it stores, ~50 ms) before the next commit,
    the housekeeping (requeue, prune to ``keep_delivered``) every 10 s and the status's backlog
    read every second. The file starts in the steady state of a device that has run a while:
    ``keep_delivered`` delivered records in it, so every record measured is also pruned."""
    section = OutboxSection()
    interval_ms = section.commit_interval_ms if commit_interval_ms is None else commit_interval_ms
    outbox = Outbox(state / "live.db", until_ingested=section.delivery == "ingested",
                    budget_bytes=int(section.budget_bytes),
                    durability_interval_s=section.durability_interval_s)
    warm = Payloads(seed=3)
    for _ in range(section.keep_delivered // 500):
        stored = outbox.append([PendingRecord("cam0", TOPIC, warm)] * 500)
        outbox.mark_sent([r.id for r in stored])
        outbox.mark_ingested("cam0", [(stored[0].seq, stored[-1].seq)])
    outbox.flush_marks()
    outbox.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    payloads = Payloads(seed=2)
    writes = _disk_writes()
    tick_ms = 0
    due = 0.0
    ticks = max(1, 1000 // max(interval_ms, 1))
    for second in range(seconds):
        for _ in range(ticks):
            tick_ms += 1000 // ticks
            due += fps / ticks
            count = int(due)
            due -= count
            if not count:
                continue
            stored = outbox.append([PendingRecord("cam0", TOPIC, payloads)] * count)
            outbox.mark_sent([r.id for r in stored])  # their PUBACKs
            outbox.mark_ingested("cam0", [(stored[0].seq, stored[-1].seq)])  # ingest's ack
        outbox.backlog()  # the status, once a second
        # The agent's fsync is due in the first commit after each durability interval: on
        # the simulated clock that is every simulated second, not every real one.
        outbox.maybe_fsync(force=True)
        if second % 10 == 9:  # Housekeeping.tick
            outbox.requeue_unacked(time.time_ns() - int(section.ack_timeout_s * 1e9))
            outbox.prune_sent(section.keep_delivered)
    outbox.maybe_fsync(force=True)
    wal_bytes = outbox.wal.stat().st_size
    # The checkpoint that moves what is left in the WAL into the database file (the default
    # budget's WAL allowance is 32 MiB: the agent checkpoints every ~8 MiB of WAL, about every
    # 10 minutes at this rate, and those fall inside a run of --live-s 1200). A short run
    # overstates it: every page the run touched is counted once for few records (120 s:
    # 2.24x, 1200 s: 1.92x, same code).
    outbox.db.execute("PRAGMA wal_checkpoint(PASSIVE)")
    written = _disk_writes() - writes
    outbox.close()
    per_record = written / payloads.count
    payload = payloads.bytes / payloads.count
    return {"fps": fps, "commit_interval_ms": interval_ms, "records": payloads.count,
            "wal_bytes_per_record": round(wal_bytes / payloads.count),
            "payload_bytes": round(payload), "disk_bytes_per_record": round(per_record),
            "write_amplification": round(per_record / payload, 2),
            "bytes_per_day": round(per_record * fps * 86400)}


async def drain(state: Path, broker: LocalBroker, backlog: int, live_hz: float,
                live_s: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    durable = _Durable(state, broker.url, loop, "drain")
    durable.time_latency()
    durable.link.start()
    await durable.wait_connected()

    async def live(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            durable.commit(1, timed=True)
            await asyncio.sleep(1 / live_hz)

    await live(live_s)
    await durable.wait_acked(durable.uplink.acked + 0)
    quiet = sorted(durable.latency_s)
    durable.latency_s.clear()
    broker.stop()
    for _ in range(backlog // 1000):
        durable.commit(1000)
    sent_before = durable.uplink.acked
    broker.start()
    started = time.perf_counter()
    # Records committed before the link is back are part of the outage's backlog.
    await durable.wait_connected()
    live_task = asyncio.create_task(live(3600), name="bench-live")
    await durable.wait_acked(sent_before + backlog, timeout=600)
    drained_s = time.perf_counter() - started
    live_task.cancel()
    during = sorted(durable.latency_s)
    await durable.aclose()

    def pct(values: list[float], q: float) -> float | None:
        return round(values[min(len(values) - 1, int(q * len(values)))] * 1e3, 2) if values else None

    return {"backlog": backlog, "drain_s": round(drained_s, 2),
            "drain_per_s": round(backlog / drained_s), "live_hz": live_hz,
            "live_latency_ms_quiet": {"p50": pct(quiet, 0.5), "p99": pct(quiet, 0.99),
                                      "n": len(quiet)},
            "live_latency_ms_draining": {"p50": pct(during, 0.5), "p99": pct(during, 0.99),
                                         "n": len(during)}}


def bench_sync(n: int = 20_000, rounds: int = 5, backlog: int = 100_000,
               live_hz: float = 30.0, live_s: int = 1200,
               live_commit_ms: int | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lepton-bench-sync-") as tmp, \
            LocalBroker(Path(tmp) / "broker", persistence=False) as broker:
        state = Path(tmp)
        raw: list[float] = []
        unlimited: list[float] = []
        durable: list[float] = []
        per_record: list[float] = []
        payload: list[float] = []
        for r in range(rounds):
            raw.append(raw_paho_rate(broker.port, n))
            unlimited.append(raw_paho_rate(broker.port, n, inflight=0))
            rate, written, size = asyncio.run(durable_rate(state, broker.url, n, f"round{r}"))
            durable.append(rate)
            per_record.append(written)
            payload.append(size)
        disk = statistics.median(per_record)
        mean_payload = statistics.mean(payload)
        raw_med, durable_med = statistics.median(raw), statistics.median(durable)
        report: dict[str, Any] = {
            "messages": n, "rounds": rounds, "payload_bytes": round(mean_payload),
            "raw_paho_per_s": round(raw_med), "durable_per_s": round(durable_med),
            "durable_vs_raw": round(durable_med / raw_med, 3),
            # For context: paho without its in-flight limit, whose per-PUBACK scan of the
            # messages in flight the agent avoids (its own window bounds what is in flight).
            "raw_paho_no_limit_per_s": round(statistics.median(unlimited)),
            "disk_bytes_per_record": round(disk),
            "write_amplification": round(disk / mean_payload, 2),
            "live": live_writes(state, seconds=live_s, commit_interval_ms=live_commit_ms),
        }
        if backlog:
            report["drain"] = asyncio.run(drain(state, broker, backlog, live_hz, 3.0))
        return report
