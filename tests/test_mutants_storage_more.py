"""The storage paths of a start on a state directory that cannot be written, in-process: what the
mutation run (``make mutants``) found no fast test reaching or left alive. The volatile outbox's
checks (agent/storage/volatile.py), the RAM-filesystem warning (mounts.py), the read-only lock
(lock.py), the report's reads of saved state and its integrity check (report.py),
``Outbox.adopt_state`` and the seq floor taken from the clock.

A directory that cannot be written is made for real, without a mount: the immutable attribute
(``FS_IOC_SETFLAGS``, which refuses even root) where the test runs as root, mode 0555 otherwise.
Free space is the one figure faked (``os.statvfs`` for one path): no fast test can fill a disk
to an exact byte count.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import stat
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.errors import StorageError
from agent.storage.blobs import BlobStore
from agent.storage.lock import LOCK_NAME, StateDirLock
from agent.storage.mounts import ram_filesystem_warning
from agent.storage.outbox import ROW_OVERHEAD, Outbox, PendingRecord
from agent.storage.report import (
    OutboxUnreadable,
    integrity_check,
    read_all_state,
    read_blob,
    read_counts,
    read_delivery_marks,
    read_events,
    read_report,
    record_seqs,
)
from agent.storage.volatile import state_dir_unusable, volatile_budget, volatile_dir

MIB = 1 << 20
FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_IMMUTABLE_FL = 0x80086601, 0x40086602, 0x10


def _record(stream: str = "cam0", kind: str = "result", body: object = None) -> PendingRecord:
    return PendingRecord(stream, f"t/{stream}", lambda seq: json.dumps([body, seq]).encode(),
                         kind=kind)


# -- a directory or file this process cannot write -----------------------------------------------

def _set_immutable(path: Path, on: bool) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        buf = bytearray(4)
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf)
        flags = struct.unpack("i", buf)[0]
        flags = flags | FS_IMMUTABLE_FL if on else flags & ~FS_IMMUTABLE_FL
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i", flags))
    finally:
        os.close(fd)


@contextlib.contextmanager
def unwritable(*paths: Path) -> Iterator[int]:
    """``paths`` cannot be written (nor a directory's entries added) while inside; yields the
    errno a write gets (EPERM for the immutable attribute, EACCES for the mode)."""
    done: list[tuple[Path, int]] = []
    try:
        for path in paths:
            mode = stat.S_IMODE(path.stat().st_mode)
            if os.geteuid() == 0:
                try:
                    _set_immutable(path, True)
                except OSError as exc:
                    pytest.skip(f"no immutable attribute on this filesystem: {exc.strerror}")
            else:
                path.chmod(0o555 if path.is_dir() else 0o444)
            done.append((path, mode))
        yield errno.EPERM if os.geteuid() == 0 else errno.EACCES
    finally:
        for path, mode in reversed(done):
            if os.geteuid() == 0:
                _set_immutable(path, False)
            else:
                path.chmod(mode)


@pytest.fixture
def free_space(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[Path, int]]:
    """Set ``free_space[path] = n``: os.statvfs says ``n`` bytes are free for that path (4 KiB
    blocks and a remainder, as the product must multiply f_bavail by f_frsize); every other
    path is asked for real."""
    fake: dict[Path, int] = {}
    real = os.statvfs

    def statvfs(path: object) -> object:
        key = Path(path)  # type: ignore[arg-type]
        if key in fake:
            return SimpleNamespace(f_bavail=fake[key] // 4096, f_frsize=4096,
                                   f_bsize=4096, f_blocks=10 * fake[key] // 4096 + 1)
        return real(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "statvfs", statvfs)
    yield fake


# -- volatile.state_dir_unusable -----------------------------------------------------------------

def test_a_usable_state_dir_is_made_with_its_lock_file(tmp_path: Path) -> None:
    state = tmp_path / "a" / "b" / "state"  # parents missing too
    assert state_dir_unusable(state) is None
    lock = state / LOCK_NAME
    assert state.is_dir() and lock.is_file() and lock.read_bytes() == b""
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(lock.stat().st_mode) == 0o644 & ~umask
    # An existing directory: checked again, its lock file made again when it went.
    lock.unlink()
    assert state_dir_unusable(state) is None
    assert lock.is_file()


def test_a_state_dir_that_cannot_be_made_is_named_with_the_system_words(tmp_path: Path) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    with unwritable(parent) as err:
        assert state_dir_unusable(parent / "state") == (
            f"cannot create {parent / 'state'}: {os.strerror(err)}")
    assert not (parent / "state").exists()


def test_a_lock_file_that_cannot_be_opened_is_named(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    with unwritable(state) as err:  # no lock file yet, and none can be made
        assert state_dir_unusable(state) == (
            f"cannot open {state / LOCK_NAME} for writing: {os.strerror(err)}")
    (state / LOCK_NAME).write_text("")
    with unwritable(state / LOCK_NAME) as err:  # there, but read-only
        assert state_dir_unusable(state) == (
            f"cannot open {state / LOCK_NAME} for writing: {os.strerror(err)}")


def test_errors_of_a_wrong_path_are_left_to_the_lock(tmp_path: Path) -> None:
    """A path under a file (ENOTDIR) or a lock path that is a directory (EISDIR) is a mistake in
    the config, not an unwritable filesystem: None, so the lock says it as ever."""
    (tmp_path / "file").write_text("x")
    assert state_dir_unusable(tmp_path / "file" / "state") is None
    state = tmp_path / "state"
    (state / LOCK_NAME).mkdir(parents=True)
    assert state_dir_unusable(state) is None


def test_too_little_free_space_is_named_in_kib(tmp_path: Path,
                                               free_space: dict[Path, int]) -> None:
    state = tmp_path / "state"
    state.mkdir()
    free_space[state] = MIB  # exactly the default minimum: enough
    assert state_dir_unusable(state) is None
    free_space[state] = MIB - 4096
    assert state_dir_unusable(state) == (
        f"no space left on the filesystem of {state}: 1020 KiB free, under the 1024 KiB an "
        "outbox needs to start")
    free_space[state] = 5000 * 1024 + 4096 * 2  # 5008 KiB
    assert state_dir_unusable(state, min_free=5009 * 1024 + 512) == (
        f"no space left on the filesystem of {state}: 5008 KiB free, under the 5009 KiB an "
        "outbox needs to start")
    assert state_dir_unusable(state, min_free=5008 * 1024) is None


def test_an_existing_state_dir_is_still_checked_for_space(tmp_path: Path,
                                                          free_space: dict[Path, int]) -> None:
    state = tmp_path / "state"
    state.mkdir()
    free_space[state] = 4096
    assert state_dir_unusable(state) == (
        f"no space left on the filesystem of {state}: 4 KiB free, under the 1024 KiB an outbox "
        "needs to start")


# -- volatile.volatile_dir and volatile_budget ---------------------------------------------------

def test_the_volatile_dir_is_under_the_runtime_directory(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    assert volatile_dir(state, {"RUNTIME_DIRECTORY": "/run/lepton"}) == Path(
        "/run/lepton/volatile-state")
    # systemd lists several RuntimeDirectory= paths with colons: the first one.
    assert volatile_dir(state, {"RUNTIME_DIRECTORY": "/run/a:/run/b"}) == Path(
        "/run/a/volatile-state")
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/from-env")
    assert volatile_dir(state) == Path("/run/from-env/volatile-state")
    # An environment passed in is the one read, not the process's.
    digest = hashlib.sha256(str(state).encode()).hexdigest()[:12]
    assert volatile_dir(state, {}) == Path(tempfile.gettempdir()) / f"lepton-agent-volatile-{digest}"
    assert volatile_dir(state, {"RUNTIME_DIRECTORY": ""}) == volatile_dir(state, {})


def test_without_one_the_volatile_dir_is_named_after_the_absolute_state_dir(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.chdir(tmp_path)
    expected = hashlib.sha256(f"{tmp_path}/var/state".encode()).hexdigest()[:12]
    assert len(expected) == 12
    where = volatile_dir(Path("var/state"))
    assert where == Path(tempfile.gettempdir()) / f"lepton-agent-volatile-{expected}"
    assert volatile_dir(tmp_path / "var" / "state") == where  # the same directory either way
    assert volatile_dir(tmp_path / "other") != where


def test_the_volatile_budget_is_capped_by_64_mib_and_half_the_free_space(
        tmp_path: Path, free_space: dict[Path, int]) -> None:
    free_space[tmp_path] = 1 << 30  # plenty: the configured budget, or 64 MiB at most
    assert volatile_budget(10 * MIB, tmp_path) == 10 * MIB
    assert volatile_budget(1 << 30, tmp_path) == 64 * MIB
    assert volatile_budget(-5, tmp_path) == 0
    assert volatile_budget(0, tmp_path) == 0
    free_space[tmp_path] = 10 * MIB + 3 * 4096  # RAM is short: half of what is free
    budget = volatile_budget(1 << 30, tmp_path)
    assert budget == 5 * MIB + 6144 and isinstance(budget, int)
    assert volatile_budget(2 * MIB, tmp_path) == 2 * MIB
    free_space[tmp_path] = 0
    assert volatile_budget(2 * MIB, tmp_path) == 0


# -- mounts.ram_filesystem_warning ---------------------------------------------------------------

def _proc(root: Path, lines: list[str]) -> Path:
    (root / "self").mkdir(parents=True)
    (root / "self" / "mountinfo").write_text("".join(line + "\n" for line in lines))
    return root


def test_a_state_dir_on_tmpfs_is_warned_about_with_its_fix(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    proc = _proc(tmp_path / "proc", [
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw",
        f"40 22 0:40 / {tmp_path} rw,nosuid shared:20 - tmpfs tmpfs rw,size=65536k",
    ])
    assert ram_filesystem_warning(state, proc) == (
        f"state directory {state} is on tmpfs ({tmp_path}), which is RAM: the outbox and what "
        "it holds do not survive a reboot or a power cut (fix: put [agent] state_dir on the "
        "card, e.g. /var/lib/lepton)")


def test_no_warning_on_a_card_or_without_mounts(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    card = _proc(tmp_path / "card", [
        "22 1 8:1 / / rw,relatime shared:1 - tmpfs tmpfs rw",
        f"40 22 179:2 / {tmp_path} rw,noatime shared:20 - ext4 /dev/mmcblk0p2 rw",
    ])
    assert ram_filesystem_warning(state, card) is None
    elsewhere = _proc(tmp_path / "elsewhere", [  # no mount above the state dir
        "40 22 0:40 / /run/elsewhere rw shared:20 - tmpfs tmpfs rw"])
    assert ram_filesystem_warning(state, elsewhere) is None
    assert ram_filesystem_warning(state, tmp_path / "no-proc") is None


# -- lock.StateDirLock: read-only, and what release leaves -----------------------------------------

def test_a_read_only_lock_creates_nothing_when_there_is_no_lock_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    lock = StateDirLock(state, read_only=True)
    assert lock.acquire() is lock and not lock.held
    assert not (state / LOCK_NAME).exists()
    lock.release()


def test_a_read_only_lock_holds_the_directory_without_writing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / LOCK_NAME).write_text("4242\n")  # an earlier agent's pid, left behind
    with unwritable(state, state / LOCK_NAME), StateDirLock(state, read_only=True) as held:
        assert held.held
        with pytest.raises(StorageError) as refused:
            StateDirLock(state, read_only=True).acquire()
        assert "another agent (pid 4242) is running on state directory" in str(refused.value)
    assert (state / LOCK_NAME).read_text() == "4242\n"  # no pid written, nothing truncated
    with StateDirLock(state) as writer:  # released: a writable lock takes it
        assert writer.held


def test_release_empties_the_lock_file_and_lets_another_in(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with StateDirLock(state):
        assert (state / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    assert (state / LOCK_NAME).read_text() == ""
    with StateDirLock(state) as again:
        assert again.held


def test_a_full_disk_at_release_still_releases(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    lock = StateDirLock(state).acquire()

    def full(fd: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patched:
        patched.setattr(os, "ftruncate", full)
        lock.release()
    assert not lock.held
    with StateDirLock(state) as again:
        assert again.held


def test_a_stale_pid_is_not_named_when_ours_cannot_be_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lock file still says 98765 (an agent killed before it released); the disk is full
    when this one writes its pid: a second agent is told "another process", never 98765 nor a
    piece of it."""
    state = tmp_path / "state"
    state.mkdir()
    (state / LOCK_NAME).write_text("98765\n")

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patched:
        patched.setattr(os, "write", full)
        first = StateDirLock(state).acquire()
    try:
        with pytest.raises(StorageError) as refused:
            StateDirLock(state).acquire()
        assert "another agent (another process) is running" in str(refused.value)
    finally:
        first.release()


# -- report: saved state, on a read-only state directory too ---------------------------------------

def test_all_saved_state_is_read(tmp_path: Path) -> None:
    assert read_all_state(tmp_path) == {}
    box = Outbox(tmp_path / "outbox.db")
    box.append([_record()], state={"pos/cam0": "12", "ota/clock": "{}"})
    box.append([_record()], state={"pos/cam0": "13"})
    assert read_all_state(tmp_path) == {"pos/cam0": "13", "ota/clock": "{}"}
    box.close()
    assert read_all_state(tmp_path) == {"pos/cam0": "13", "ota/clock": "{}"}


def test_saved_state_is_read_from_a_read_only_state_dir(tmp_path: Path) -> None:
    """Closed cleanly (no WAL): SQLite cannot make the WAL index in an unwritable directory, so
    the file is read as immutable."""
    box = Outbox(tmp_path / "outbox.db")
    box.append([_record()], state={"pos/cam0": "7", "count/b": "3"})
    box.close()
    assert not (tmp_path / "outbox.db-wal").exists()
    uri = f"{(tmp_path / 'outbox.db').as_uri()}?mode=ro"
    with unwritable(tmp_path):
        with pytest.raises(sqlite3.Error), contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            conn.execute("SELECT 1 FROM pipeline_state").fetchall()  # a plain read-only open
        assert read_all_state(tmp_path) == {"pos/cam0": "7", "count/b": "3"}


def test_a_wal_left_on_a_read_only_state_dir_is_not_read_past(tmp_path: Path) -> None:
    """A WAL left beside the file (the agent did not close it): reading the file as immutable
    would return the state before the WAL's commits, so the report refuses."""
    box = Outbox(tmp_path / "outbox.db")
    box.append([_record()], state={"pos/cam0": "1"})
    box.close()  # "1" is in the database file
    box = Outbox(tmp_path / "outbox.db")
    box.append([_record()], state={"pos/cam0": "2"})  # "2" only in the WAL
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("outbox.db", "outbox.db-wal"):  # as a power cut leaves them: no -shm
        shutil.copyfile(tmp_path / name, copy / name)
    box.close()
    assert read_all_state(copy) == {"pos/cam0": "2"}  # writable: SQLite reads the WAL
    (copy / "outbox.db-shm").unlink()
    with unwritable(copy), pytest.raises(OutboxUnreadable) as unreadable:
        read_all_state(copy)
    assert str(unreadable.value).startswith(f"storage {copy / 'outbox.db'}: unreadable: ")
    assert unreadable.value.path == str(copy / "outbox.db")


def test_an_unreadable_file_is_named_with_or_without_a_wal(tmp_path: Path) -> None:
    (tmp_path / "outbox.db").write_bytes(b"not a database" * 100)
    for wal in (False, True):
        if wal:
            (tmp_path / "outbox.db-wal").write_bytes(b"")
        with pytest.raises(OutboxUnreadable) as unreadable:
            read_all_state(tmp_path)
        assert str(unreadable.value) == (
            f"storage {tmp_path / 'outbox.db'}: unreadable: file is not a database")
        assert unreadable.value.path == str(tmp_path / "outbox.db")


# -- report.integrity_check ----------------------------------------------------------------------

def test_integrity_check_of_a_sound_and_of_a_foreign_file(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    box.append([_record(body=n) for n in range(20)], state={"k": "v"})
    assert integrity_check(tmp_path) == "ok"
    box.close()
    assert integrity_check(tmp_path) == "ok"
    other = tmp_path / "other"
    other.mkdir()
    (other / "outbox.db").write_bytes(b"not a database" * 100)
    with pytest.raises(OutboxUnreadable) as unreadable:
        integrity_check(other)
    assert str(unreadable.value) == (
        f"storage {other / 'outbox.db'}: unreadable: file is not a database")
    assert unreadable.value.path == str(other / "outbox.db")


def test_integrity_check_reports_a_damaged_index(tmp_path: Path) -> None:
    """A row whose index entry is missing: quick_check does not look, integrity_check does."""
    db = tmp_path / "outbox.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT)")
        conn.execute("CREATE INDEX t_b ON t (b)")
        conn.executemany("INSERT INTO t (b) VALUES (?)", [(f"v{n}",) for n in range(10)])
        conn.commit()
        conn.execute("PRAGMA writable_schema = ON")
        # the index now stands for another column: its entries no longer match the rows
        conn.execute("UPDATE sqlite_master SET sql = 'CREATE INDEX t_b ON t (a)' "
                     "WHERE name = 't_b'")
        conn.commit()
    result = integrity_check(tmp_path)
    assert result != "ok" and "t_b" in result


# -- outbox.adopt_state --------------------------------------------------------------------------

def test_adopt_state_takes_only_the_keys_this_file_lacks(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    box.append([_record()], state={"pos/cam0": "12"})
    assert box.adopt_state({"pos/cam0": "99", "count/b": "3", "ota/clock": "{}"}) == 2
    assert box.read_state("pos/cam0") == "12"
    assert box.read_state("count/b") == "3" and box.read_state("ota/clock") == "{}"
    assert box.adopt_state({"count/b": "4"}) == 0 and box.adopt_state({}) == 0
    box.close()
    assert read_all_state(tmp_path) == {"pos/cam0": "12", "count/b": "3", "ota/clock": "{}"}


# -- report: events, blobs and delivery marks at their edges ---------------------------------------

def test_read_events_defaults_to_the_newest_hundred(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    box.append([_record("cam0.events", "event", n) for n in range(101)])
    events = read_events(tmp_path)
    assert [json.loads(e.payload)[0] for e in events] == list(range(100, 0, -1))
    box.close()


def test_a_blob_with_a_short_chunk_is_not_shown(tmp_path: Path) -> None:
    """All its chunks there but their bytes fewer than its size (a damaged chunk): not whole."""
    box = Outbox(tmp_path / "outbox.db")
    blobs = BlobStore(box, chunk_size=1024)
    data = bytes(range(256)) * 8  # two chunks
    blob = blobs.put(data)
    assert read_blob(tmp_path, blob) == ("image/jpeg", data)
    box.db.execute("UPDATE blob_chunks SET data = substr(data, 1, 1000) WHERE blob = ? AND idx = 1",
                   (blob,))
    assert read_blob(tmp_path, blob) is None
    box.close()


def test_the_watermark_time_is_when_it_moved(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    box.append([_record(body=n) for n in range(3)])
    before_s = time.time_ns() // 10**9
    box.mark_ingested("cam0", [(1, 3)])  # in order from the first: the watermark moves
    box.flush_marks()
    marks = read_delivery_marks(tmp_path)
    after = time.time_ns()
    for at in (marks.last_ingest_ack_ns, marks.last_puback_ns):
        assert at is not None and at % 10**9 == 0  # whole seconds, as the file keeps it
        assert (before_s - 1) * 10**9 <= at <= after
    box.close()


def _count(n: int) -> PendingRecord:
    """A count record as the contract writes it: a JSON object well over MIN_SIZE, the same
    keys every time, so the outbox stores it compressed with its class's dictionary."""
    body = {"schema": {"id": "lepton.count", "version": 1}, "device": "edge-01", "site": "gate",
            "line": "north", "class": "car", "n": n}
    return PendingRecord("cam0.counts", "t/cam0.counts",
                         lambda seq: json.dumps({**body, "seq": seq}).encode(), kind="count")


def test_compressed_payloads_are_read_as_appended(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    box.append([_count(n) for n in range(5)])
    stored = [bytes(p) for (p,) in box.db.execute("SELECT payload FROM records ORDER BY id")]
    assert all(p[:2] == b"\xffZ" for p in stored[1:])  # compressed at rest
    counts = read_counts(tmp_path, 3600)
    assert [json.loads(c.payload)["n"] for c in counts] == [0, 1, 2, 3, 4]
    assert [json.loads(c.payload)["seq"] for c in counts] == [c.seq for c in counts] == [1, 2, 3, 4, 5]
    box.close()


def test_the_count_window_starts_exactly_since_s_before_now(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    box = Outbox(tmp_path / "outbox.db")
    t0 = 1_800_000_000 * 10**9
    for n, at in enumerate((t0 - 1, t0, t0 + 1)):
        monkeypatch.setattr(time, "time_ns", lambda at=at: at)
        box.append([_count(n)])
    monkeypatch.setattr(time, "time_ns", lambda: t0 + 3600 * 10**9)
    counts = read_counts(tmp_path, 3600)
    assert [(c.created_ns, json.loads(c.payload)["n"]) for c in counts] == [(t0, 1), (t0 + 1, 2)]
    box.close()


def test_read_counts_returns_at_most_20000_by_default(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    box.append([PendingRecord("cam0.counts", "t", lambda seq: b'{"n":%d}' % seq, kind="count")
                for _ in range(20_001)])
    newest = read_counts(tmp_path, 3600)
    assert len(newest) == 20_000 and (newest[0].seq, newest[-1].seq) == (2, 20_001)
    assert len(read_counts(tmp_path, 3600, limit=20_001)) == 20_001
    box.close()


# -- outbox: the seq floor a volatile outbox (or a quarantine) takes from the clock --------------

def test_a_fresh_floor_lifts_every_stream_above_the_clock(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The floor is the clock in ms x 1000; a stream the file has continues above it, a new
    stream starts above it; a later floor below what was given out lowers nothing."""
    path = tmp_path / "outbox.db"
    box = Outbox(path)
    assert [r.seq for r in box.append([_record("cam0"), _record("cam0")])] == [1, 2]
    box.close()
    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.25)
    floor = 1_800_000_000_250 * 1000
    box = Outbox(path, fresh_seq_floor=True)
    stored = box.append([_record("cam0"), _record("cam1")])
    assert [(r.stream, r.seq) for r in stored] == [("cam0", floor + 1), ("cam1", floor + 1)]
    box.close()
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.0)  # the clock stepped back
    box = Outbox(path, fresh_seq_floor=True)
    stored = box.append([_record("cam0"), _record("cam2")])
    assert [(r.stream, r.seq) for r in stored] == [("cam0", floor + 2), ("cam2", floor + 1)]
    box.close()


def test_a_database_without_records_is_not_reported_as_an_outbox(tmp_path: Path) -> None:
    with contextlib.closing(sqlite3.connect(tmp_path / "outbox.db")) as conn:
        conn.execute("CREATE TABLE notes (a TEXT)")
        conn.commit()
    with pytest.raises(OutboxUnreadable) as unreadable:
        read_report(tmp_path)
    assert str(unreadable.value) == (
        f"storage {tmp_path / 'outbox.db'}: unreadable: no records table (not an outbox, or "
        "never written) (fix: restart the agent: it moves a corrupt file aside and starts a "
        "fresh one)")


# -- outbox: the reserve file, released on a full disk --------------------------------------------

def test_the_reserve_file_takes_its_share_of_the_budget(tmp_path: Path) -> None:
    """1 MiB without a budget; with one, a 64th of it, at least 64 KiB, at most 4 MiB and at
    most an eighth of the budget."""
    for budget, expected in ((None, MIB), (256 * MIB, 4 * MIB), (1 << 30, 4 * MIB),
                             (64 * MIB, MIB), (MIB, 64 * 1024), (256 * 1024, 32 * 1024)):
        path = tmp_path / f"{budget}" / "outbox.db"
        path.parent.mkdir()
        box = Outbox(path, budget_bytes=budget)
        assert path.with_name("outbox.db.reserve").stat().st_size == expected, budget
        box.close()


def test_a_short_reserve_is_topped_up_and_a_long_one_left(tmp_path: Path) -> None:
    reserve = tmp_path / "outbox.db.reserve"
    for short in (1000, MIB - 1):
        reserve.write_bytes(b"\0" * short)
        Outbox(tmp_path / "outbox.db").close()
        assert reserve.stat().st_size == MIB
    reserve.write_bytes(b"\0" * (MIB + 5))
    Outbox(tmp_path / "outbox.db").close()
    assert reserve.stat().st_size == MIB + 5


def test_the_reserve_takes_at_most_half_the_free_space(tmp_path: Path,
                                                       free_space: dict[Path, int]) -> None:
    state = tmp_path / "state"
    state.mkdir()
    free_space[state] = 300 * 1024 + 4096 * 3  # 312 KiB free: a reserve of 156 KiB
    Outbox(state / "outbox.db").close()
    assert (state / "outbox.db.reserve").stat().st_size == 156 * 1024


# -- outbox.write_within_budget: which failures make room and how often ------------------------

def test_only_a_full_page_cap_makes_room_and_at_most_eight_tries(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", budget_bytes=64 * MIB, compress=False)
    box.append([PendingRecord("cam0", "t", lambda seq: b"x" * 1000) for _ in range(2000)])
    calls: list[str] = []

    def failing(text: str) -> Callable[[], None]:
        def write() -> None:
            calls.append(text)
            raise sqlite3.OperationalError(text)
        return write

    # Not SQLITE_FULL (a lock, say): raised at once, nothing evicted for it.
    with pytest.raises(sqlite3.OperationalError, match=r"^database is locked$"):
        box.write_within_budget(failing("database is locked"), 1000)
    assert len(calls) == 1 and len(record_seqs(tmp_path)) == 2000
    # SQLITE_FULL at the file's cap (the disk has room): room made, tried again, eight times in
    # all, then the error as it was.
    calls.clear()
    with pytest.raises(sqlite3.OperationalError, match=r"^database or disk is full$"):
        box.write_within_budget(failing("database or disk is full"), 1000)
    assert len(calls) == 8
    # Before each retry, room for 4 pages (more than the 1000 bytes asked), doubled each time:
    # whole records of 1000 bytes plus their row overhead, the oldest first.
    page = int(box.db.execute("PRAGMA page_size").fetchone()[0])
    evicted = sum(-(-(4 * page << attempt) // (1000 + ROW_OVERHEAD)) for attempt in range(7))
    assert record_seqs(tmp_path) == list(range(evicted + 1, 2001))
    box.close()


def test_enforce_budget_returns_zero_when_nothing_was_evicted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    unbudgeted = Outbox(tmp_path / "a.db")
    unbudgeted.append([_record()])
    assert unbudgeted.enforce_budget() == 0
    unbudgeted.close()
    budgeted = Outbox(tmp_path / "b.db", budget_bytes=64 * MIB)
    budgeted.append([_record()])
    with caplog.at_level(logging.DEBUG, logger="agent"):
        assert budgeted.enforce_budget() == 0
    assert not [r for r in caplog.records if "budget" in r.getMessage()]  # nothing to say
    budgeted.close()
