"""Ingest under the bad input of issue 21, for real: its own PostgreSQL server stopped and
started mid-run, its broker stopped and started on the same port mid-run, and an SQLite
database on a disk that fills up. Simulated devices publish throughout and keep every record
until ingest acknowledges it; the store is read directly at the end."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.core.uri import parse_broker
from agent.devtools.mosquitto import LocalBroker, free_port
from agent.devtools.simulate import FleetOptions, FleetReport, run_fleet, store_reader
from tests.conftest import ROOT
from tests.e2e import ReapedIngest
from tests.ingest_support import wait_until
from tests.test_full_disk import _fill
from tests.test_ingest_metrics import scrape
from tests.tmpfs import mounted_tmpfs

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class PgServer:
    """A PostgreSQL server of the test's own (initdb, pg_ctl as the ``postgres`` user), on a
    free loopback port with its unix socket in its own directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["runuser", "-u", "postgres", "--", *args], capture_output=True,
                              text=True, timeout=120)

    def init(self) -> None:
        done = self._as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust",
                                 "-U", "postgres", "--no-sync")
        assert done.returncode == 0, done.stderr

    def start(self) -> None:
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                   f"-c unix_socket_directories={self.root} -c fsync=off")
        done = self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options,
                                 "-l", str(self.root / "server.log"), "-w", "start")
        assert done.returncode == 0, done.stderr + self.log()

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w",
                          "stop")

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


@pytest.fixture
def pg_server() -> Iterator[PgServer]:
    """The test's own PostgreSQL server, stopped and removed afterwards (needs root, to run it
    as the postgres user, and the server's binaries; skipped otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("starting a PostgreSQL server as the postgres user needs root")
    if not (PG_BIN / "pg_ctl").exists() or shutil.which("runuser") is None:
        pytest.skip(f"no PostgreSQL server binaries in {PG_BIN} (apt-get install postgresql)")
    # Not under tmp_path: pytest's base directory is root's alone, the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="lepton-pg-"))
    root.chmod(0o755)
    shutil.chown(root, "postgres", "postgres")
    server = PgServer(root)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def fleet(broker: LocalBroker, options: FleetOptions, db: str,
          during: list[tuple[float, object]]) -> FleetReport:
    """Run the fleet; each (seconds, action) of ``during`` runs in a thread that long after
    the previous one."""
    async def run() -> FleetReport:
        async def actions() -> None:
            for delay, action in during:
                await asyncio.sleep(delay)
                await asyncio.to_thread(action)  # type: ignore[arg-type]
        task = asyncio.create_task(actions())
        report = await run_fleet(parse_broker(broker.url), options, store_reader(db))
        await task
        return report

    return asyncio.run(run())


def assert_all_stored_once(report: FleetReport, offered: int) -> None:
    assert report.offered == offered
    assert report.pending == 0, report
    assert report.lost == 0 and report.duplicates_stored == 0, report
    assert report.stored == report.offered, report


@pytest.mark.slow
def test_postgresql_server_restarted_mid_run_loses_nothing(
        tmp_path: Path, broker: LocalBroker, pg_server: PgServer) -> None:
    db = f"{pg_server.url}?schema=outage"
    port = free_port()
    ingest = ReapedIngest(broker.url, tmp_path / "i.db", "--metrics-listen",
                          f"127.0.0.1:{port}", db_url=db, log_level="info", cwd=ROOT).start()
    options = FleetOptions(devices=20, rate=20.0, seconds=10.0, site="pgrestart",
                           ack_timeout_s=2.0, drain_s=90.0)
    down: list[float] = []

    def stop() -> None:
        pg_server.stop("fast")  # backends terminated, the port closed: a real restart
        down.append(time.monotonic())

    def start() -> None:
        pg_server.start()
        down.append(time.monotonic())

    report = fleet(broker, options, db, [(3.0, stop), (3.0, start)])
    samples = scrape(port)
    stats = ingest.stop()
    assert len(down) == 2 and down[1] - down[0] >= 3.0
    assert stats["store_outages"] >= 1 and samples["lepton_ingest_store_outages_total"] >= 1
    assert "PostgreSQL went away" in ingest.log and "the database is back" in ingest.log
    assert_all_stored_once(report, 20 * 200)


@pytest.mark.slow
def test_broker_restarted_mid_run_loses_nothing(tmp_path: Path) -> None:
    broker = LocalBroker(tmp_path / "broker").start()
    try:
        db = f"sqlite:///{tmp_path}/i.db"
        ingest = ReapedIngest(broker.url, tmp_path / "i.db", log_level="info", cwd=ROOT).start()
        options = FleetOptions(devices=20, rate=20.0, seconds=10.0, site="brokerdown",
                               ack_timeout_s=2.0, drain_s=90.0)
        connects: list[int] = []

        def restart() -> None:
            broker.stop()
            time.sleep(2.0)  # devices and ingest find nobody on the port meanwhile
            broker.start()

        report = fleet(broker, options, db, [(3.0, restart)])
        stats = ingest.stop()
        connects.append(stats["connects"])
        assert stats["connects"] >= 2, stats  # ingest connected again to the new broker
        assert report.connects >= 2 * options.devices  # and so did every device
        assert_all_stored_once(report, 20 * 200)
    finally:
        broker.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs (room for the run's database and its WAL once the filler is gone), unmounted
    afterwards (needs root; skipped otherwise)."""
    with mounted_tmpfs(tmp_path / "small", "32m") as mount:
        yield mount


@pytest.mark.slow
def test_sqlite_on_a_full_disk_stops_with_a_clear_error_and_acknowledges_nothing_unstored(
        tmp_path: Path, broker: LocalBroker, small_disk: Path) -> None:
    db_path = small_disk / "ingest.db"
    db = f"sqlite:///{db_path}"
    # No --client-id: the session ends with the process, so the broker redelivers nothing to
    # the restarted one, and every record there is either stored or resent by its device
    # (a device drops a record only on ingest's ack: one sent before the commit is lost).
    ingest = ReapedIngest(broker.url, db_path, log_level="info", cwd=ROOT).start()
    filler = small_disk / "filler"
    events: list[str] = []
    stopped: list[tuple[int, str, str]] = []

    def fill_and_wait_for_the_stop() -> None:
        _fill(filler)
        code = ingest.wait(120)  # ingest stops by itself at its first failed commit
        stopped.append((code, ingest.log, ingest.stdout))
        events.append("stopped")
        filler.unlink()
        ingest.start()
        events.append("restarted")

    options = FleetOptions(devices=10, rate=20.0, seconds=12.0, site="fulldisk",
                           ack_timeout_s=2.0, drain_s=90.0)
    report = fleet(broker, options, db, [(2.0, fill_and_wait_for_the_stop)])
    ingest.stop()
    assert events == ["stopped", "restarted"]
    code, log, _ = stopped[0]
    assert code != 0 and "Traceback" not in log
    assert "database or disk is full" in log and "cannot write records" in log, log[-2000:]
    # Nothing acknowledged that was not stored: every record a device dropped on an ack is in
    # the store (lost == 0), and all the rest arrived after the restart.
    assert_all_stored_once(report, 10 * 240)


def test_own_postgresql_fixture_serves(pg_server: PgServer) -> None:
    import psycopg

    with psycopg.connect(pg_server.url, connect_timeout=10) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    pg_server.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_server.url, connect_timeout=5)
    pg_server.start()
    wait_until(lambda: _answers(pg_server.url), "the server answers again")


def _answers(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
    except psycopg.OperationalError:
        return False
