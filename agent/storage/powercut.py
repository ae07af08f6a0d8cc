"""A storage layer that can cut the power: every write and sync recorded, unsynced data lost.

For the power-loss test (``tests/test_power_cut.py``) and ``lepton-agent faults power-cut``.
SQLite runs over :class:`PowerCutVFS`, an apsw VFS that passes reads and writes through to the
real files and keeps, per file, the content as of its last sync (the *durable image*) and the
writes since. :meth:`PowerCutVFS.cut` is the power going off: from then on every write, sync,
truncate and delete is dropped (the machine is dead, the process does not know yet), and once
the connections are closed :meth:`PowerCutVFS.restore` writes each file back as the disk would
hold it after the reboot: its durable image plus a random subset of the unsynced writes (a disk
may have written any of them, in any order, before the power went), and no ``-shm`` (SQLite
rebuilds its WAL index from the WAL). A cut can also be armed to happen at the Nth write or
sync (:meth:`PowerCutVFS.arm`): the write in progress fails with :class:`PowerCut`, inside
whatever transaction, commit or checkpoint it belonged to.

The outbox runs over it unchanged: :func:`driver` gives an :class:`agent.storage.outbox.Driver`
whose connections are apsw connections behind :class:`Connection`, the subset of Python's
``sqlite3.Connection`` the outbox and the blob store use (errors mapped to sqlite3's classes
with their ``sqlite_errorname``), whose fsync syncs through the VFS and whose boot id changes
at every cut. Two differences from the agent: apsw's VFS files have no shared-memory methods,
so the connection runs WAL with ``locking_mode=EXCLUSIVE`` (the WAL index in the process's
memory; one connection per file, which the agent has anyway); and apsw bundles its own SQLite
(3.54 here against Python's 3.40), the same file format and WAL.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

try:
    import apsw
except ImportError:  # pragma: no cover - a dev dependency
    apsw = None  # type: ignore[assignment]

from agent.errors import AgentError

_ERRORS: dict[str, tuple[type[sqlite3.Error], str]] = {
    "FullError": (sqlite3.OperationalError, "SQLITE_FULL"),
    "CorruptError": (sqlite3.DatabaseError, "SQLITE_CORRUPT"),
    "NotADBError": (sqlite3.DatabaseError, "SQLITE_NOTADB"),
    "ConstraintError": (sqlite3.IntegrityError, "SQLITE_CONSTRAINT"),
    "IOError": (sqlite3.OperationalError, "SQLITE_IOERR"),
    "BusyError": (sqlite3.OperationalError, "SQLITE_BUSY"),
    "ReadOnlyError": (sqlite3.OperationalError, "SQLITE_READONLY"),
    "CantOpenError": (sqlite3.OperationalError, "SQLITE_CANTOPEN"),
    "SQLError": (sqlite3.OperationalError, "SQLITE_ERROR"),
}


class PowerCut(Exception):
    """The power went off during this write or sync."""


def require_apsw() -> None:
    if apsw is None:
        raise AgentError("the power-cut layer needs apsw", fix="pip install apsw "
                         "(part of the dev extra: pip install -e '.[dev]')")


@dataclass
class FileState:
    """One file as the disk holds it durably, and the writes since its last sync."""

    durable: bytearray
    pending: list[tuple[int, bytes | None, int]] = field(default_factory=list)
    # (offset, data, 0) for a write; (size, None, 0) for a truncate

    def apply(self, image: bytearray, keep: Iterable[bool] | None = None) -> bytearray:
        out = bytearray(image)
        for (offset, data, _), kept in zip(self.pending, keep or ([True] * len(self.pending)),
                                           strict=True):
            if not kept:
                continue
            if data is None:
                del out[offset:]
            else:
                if len(out) < offset:
                    out.extend(b"\0" * (offset - len(out)))
                out[offset:offset + len(data)] = data
        return out


@dataclass
class Counters:
    writes: int = 0
    syncs: int = 0
    bytes_written: int = 0
    writes_lost: int = 0  # unsynced writes a cut dropped
    writes_kept: int = 0  # unsynced writes a cut let reach the disk anyway


if apsw is not None:

    class _File(apsw.VFSFile):
        def __init__(self, vfs: PowerCutVFS, name: Any, flags: list[int]) -> None:
            self.vfs = vfs
            # A temporary file (no name) is SQLite's own scratch space: tracked, never restored.
            self.path = (name.filename() if hasattr(name, "filename") else
                         str(name) if name else f"<temp {id(self)}>")
            super().__init__("", name, flags)
            self.vfs._track(self.path)

        def xWrite(self, data: bytes, offset: int) -> None:
            self.vfs._event()
            if self.vfs.dead:
                return
            super().xWrite(data, offset)
            self.vfs.files[self.path].pending.append((offset, bytes(data), 0))
            self.vfs.counters.writes += 1
            self.vfs.counters.bytes_written += len(data)

        def xTruncate(self, size: int) -> None:
            if self.vfs.dead:
                return
            super().xTruncate(size)
            self.vfs.files[self.path].pending.append((size, None, 0))

        def xSync(self, flags: int) -> None:
            self.vfs._event()
            if self.vfs.dead:
                return
            super().xSync(flags)
            self.vfs._synced(self.path)

    class _VFS(apsw.VFS):
        def __init__(self, owner: PowerCutVFS, name: str) -> None:
            self.owner = owner
            super().__init__(name, "")

        def xOpen(self, name: Any, flags: list[int]) -> _File:
            return _File(self.owner, name, flags)

        def xDelete(self, filename: str, syncdir: bool) -> None:
            if self.owner.dead:
                return
            super().xDelete(filename, syncdir)
            self.owner.files.pop(filename, None)


class PowerCutVFS:
    """The VFS, its files' durable images and the cut. One per test run (a registered name)."""

    _count = 0

    def __init__(self, seed: int = 0) -> None:
        require_apsw()
        PowerCutVFS._count += 1
        self.name = f"powercut{PowerCutVFS._count}"
        self.files: dict[str, FileState] = {}
        self.dead = False
        self.boot = 1
        self.counters = Counters()
        self.rng = random.Random(seed)
        self._armed: int | None = None
        self._events = 0
        self._vfs = _VFS(self, self.name)

    def _track(self, path: str) -> None:
        if path not in self.files:
            p = Path(path)
            real = not path.startswith("<") and p.exists()
            self.files[path] = FileState(bytearray(p.read_bytes() if real else b""))

    def _event(self) -> None:
        self._events += 1
        if self._armed is not None and self._events >= self._armed and not self.dead:
            self._armed = None
            self.dead = True
            raise PowerCut(f"power cut at I/O event {self._events}")

    def _synced(self, path: str) -> None:
        state = self.files.get(path)
        if state is None:
            return
        state.durable = state.apply(state.durable)
        state.pending.clear()
        self.counters.syncs += 1

    def arm(self, after_events: int) -> None:
        """Cut the power at the ``after_events``-th write or sync from now."""
        self._armed = self._events + max(1, after_events)

    def sync_path(self, path: Path) -> None:
        """An fsync of ``path`` from outside SQLite (the outbox's periodic WAL fsync)."""
        self._event()
        if not self.dead:
            self._synced(str(path))

    def cut(self) -> None:
        """The power goes off now: nothing written from here on reaches the disk."""
        self.dead = True
        self._armed = None

    def restore(self, keep_probability: float = 0.5) -> None:
        """The reboot (after the connections are closed): each file as the disk holds it."""
        for path, state in list(self.files.items()):
            if path.startswith("<"):
                del self.files[path]
                continue
            keep = [self.rng.random() < keep_probability for _ in state.pending]
            self.counters.writes_kept += sum(keep)
            self.counters.writes_lost += len(keep) - sum(keep)
            image = state.apply(state.durable, keep)
            p = Path(path)
            if p.name.endswith("-shm"):
                p.unlink(missing_ok=True)
                del self.files[path]
                continue
            p.write_bytes(bytes(image))
            self.files[path] = FileState(image)
        self.dead = False
        self.boot += 1

    def connect(self, path: Path) -> sqlite3.Connection:
        """An outbox connection over this VFS (see :class:`Connection`)."""
        conn = apsw.Connection(str(path), vfs=self.name)
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")  # no shared memory in a Python VFS
        return cast(sqlite3.Connection, Connection(conn))


def driver(vfs: PowerCutVFS) -> Any:
    """An outbox :class:`~agent.storage.outbox.Driver` over ``vfs``."""
    from agent.storage.outbox import Driver

    return Driver(connect=vfs.connect, fsync=vfs.sync_path, boot_id=lambda: f"boot-{vfs.boot}")


def _mapped(exc: BaseException) -> BaseException:
    """An apsw error as the sqlite3 error the outbox expects (a cut as an I/O error)."""
    if isinstance(exc, PowerCut):
        err: sqlite3.Error = sqlite3.OperationalError(f"disk I/O error ({exc})")
        setattr(err, "sqlite_errorname", "SQLITE_IOERR")  # noqa: B010 - typeshed: read-only
        return err
    kind, name = _ERRORS.get(type(exc).__name__, (sqlite3.OperationalError, "SQLITE_ERROR"))
    text = str(exc)
    if ": " in text and text.split(": ", 1)[0].endswith("Error"):
        text = text.split(": ", 1)[1]
    err = kind(text)
    setattr(err, "sqlite_errorname", name)  # noqa: B010 - typeshed: read-only
    return err


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except sqlite3.Error:
        raise
    except (apsw.Error, PowerCut) as exc:
        raise _mapped(exc) from exc


class Cursor:
    """What the outbox reads from a statement: rows, ``rowcount`` and ``lastrowid``."""

    def __init__(self, rows: list[tuple[Any, ...]], rowcount: int, lastrowid: int) -> None:
        self._rows = rows
        self.rowcount = rowcount
        self.lastrowid = lastrowid

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._rows.pop(0) if self._rows else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        rows, self._rows = self._rows, []
        return rows

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.fetchall())


class Connection:
    """The part of ``sqlite3.Connection`` (isolation_level=None) the outbox uses, over apsw."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    @property
    def in_transaction(self) -> bool:
        return bool(self._conn.in_transaction)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        with _errors():
            before = self._conn.total_changes()
            rows = [tuple(r) for r in self._conn.execute(sql, tuple(params))]
            changed = self._conn.total_changes() - before
            return Cursor(rows, changed, int(self._conn.last_insert_rowid()))

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> Cursor:
        with _errors():
            before = self._conn.total_changes()
            batch = [tuple(p) for p in seq]
            if batch:
                for _ in self._conn.executemany(sql, batch):
                    pass
            return Cursor([], self._conn.total_changes() - before,
                          int(self._conn.last_insert_rowid()))

    def executescript(self, sql: str) -> Cursor:
        with _errors():
            for _ in self._conn.execute(sql):
                pass
            return Cursor([], 0, 0)

    def close(self) -> None:
        with contextlib.suppress(apsw.Error, PowerCut):
            self._conn.close()
