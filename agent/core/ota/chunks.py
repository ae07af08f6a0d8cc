"""Chunked transfer of a bundle file: the plan, and a resumable receiver's state.

The sender cuts a file into fixed-size chunks (the last one shorter) and sends a
:class:`ChunkPlan`: each chunk's sha256 and the whole file's sha256 and size. The receiver
checks the plan against the signed document's entry for that file (:meth:`ChunkPlan.matches`:
the size and whole hash are signed, so a plan cannot make it fetch more bytes than the signed
file has) and against its disk budget, then accepts chunks in any order, each verified on its
own, and asks again only for the ones it lacks (:meth:`ReceiveState.missing`) after a restart.
When every chunk is in, the caller hashes the assembled file and :meth:`ReceiveState.finish`
compares it with the whole sha256.

Pure logic: the caller writes the bytes (at ``ChunkPlan.span(i)``'s offset, flushed before it
persists the state from :meth:`ReceiveState.accept`) and persists :meth:`ReceiveState.to_json`.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from agent.core.ota.document import FileEntry

# 256 KiB: an MQTT message well under brokers' default limits, and a resend after a lost
# chunk costs little on a slow uplink.
DEFAULT_CHUNK_SIZE = 256 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")


class ChunkError(ValueError):
    """A chunk plan or receiver state is inconsistent."""


@dataclass(frozen=True)
class ChunkPlan:
    """How one file travels: its path in the bundle, size, chunk size, per-chunk and whole sha256."""

    path: str
    size: int
    chunk_size: int
    chunk_sha256: tuple[str, ...]
    sha256: str

    def __post_init__(self) -> None:
        if type(self.size) is not int or self.size < 0:
            raise ChunkError(f"{self.path}: size {self.size!r} is not an integer >= 0")
        if type(self.chunk_size) is not int or self.chunk_size < 1:
            raise ChunkError(f"{self.path}: chunk size {self.chunk_size!r} is not an integer >= 1")
        expected = -(-self.size // self.chunk_size)
        if len(self.chunk_sha256) != expected:
            raise ChunkError(f"{self.path}: {len(self.chunk_sha256)} chunk hashes for {self.size} "
                             f"bytes in chunks of {self.chunk_size} (expected {expected})")
        if not all(_HEX64.fullmatch(h) for h in (*self.chunk_sha256, self.sha256)):
            raise ChunkError(f"{self.path}: hashes must be 64 lowercase hex digits")

    @property
    def count(self) -> int:
        return len(self.chunk_sha256)

    def span(self, index: int) -> tuple[int, int]:
        """(offset, length) of chunk ``index`` in the file."""
        if not 0 <= index < self.count:
            raise ChunkError(f"{self.path}: chunk {index} out of range 0..{self.count - 1}")
        offset = index * self.chunk_size
        return offset, min(self.chunk_size, self.size - offset)

    def matches(self, entry: FileEntry) -> bool:
        """The plan is for exactly the signed file (path, size and whole sha256)."""
        return (self.path, self.size, self.sha256) == (entry.path, entry.size, entry.sha256)

    def to_json(self) -> dict[str, object]:
        return {"path": self.path, "size": self.size, "chunk_size": self.chunk_size,
                "chunk_sha256": list(self.chunk_sha256), "sha256": self.sha256}

    @classmethod
    def from_json(cls, data: object) -> ChunkPlan:
        if not isinstance(data, dict):
            raise ChunkError(f"chunk plan is not an object: {type(data).__name__}")
        try:
            return cls(str(data["path"]), data["size"], data["chunk_size"],
                       tuple(str(h) for h in data["chunk_sha256"]), str(data["sha256"]))
        except (KeyError, TypeError) as exc:
            raise ChunkError(f"chunk plan is unreadable: {exc!r}") from exc


def plan_chunks(path: str, chunks: Iterable[bytes], chunk_size: int = DEFAULT_CHUNK_SIZE) -> ChunkPlan:
    """The plan for a file given as consecutive pieces of exactly ``chunk_size`` bytes (the last
    may be shorter); the sender's side, fed by a file reader."""
    whole = hashlib.sha256()
    hashes: list[str] = []
    size = 0
    short = False
    for chunk in chunks:
        if short or not 0 < len(chunk) <= chunk_size:
            raise ChunkError(f"{path}: chunk {len(hashes)} is {len(chunk)} bytes; only the last "
                             f"chunk may be shorter than {chunk_size}")
        short = len(chunk) < chunk_size
        whole.update(chunk)
        hashes.append(hashlib.sha256(chunk).hexdigest())
        size += len(chunk)
    return ChunkPlan(path, size, chunk_size, tuple(hashes), whole.hexdigest())


class ChunkOutcome(str, enum.Enum):
    """What :meth:`ReceiveState.accept` made of one chunk."""

    ACCEPTED = "accepted"        # new and verified: write it, then persist the state
    DUPLICATE = "duplicate"      # already verified (a resend): nothing to do
    BAD_HASH = "bad_hash"        # sha256 differs: drop it and ask again
    BAD_SIZE = "bad_size"        # length differs from its span: drop it and ask again
    OUT_OF_RANGE = "out_of_range"  # no such chunk index: the sender is confused


class WholeOutcome(str, enum.Enum):
    """What :meth:`ReceiveState.finish` made of the assembled file."""

    VERIFIED = "verified"
    INCOMPLETE = "incomplete"    # chunks are missing
    BAD_HASH = "bad_hash"        # every chunk verified but the whole does not (disk corruption)


@dataclass(frozen=True)
class ReceiveState:
    """Which chunks of a planned file are verified and written. Immutable: each step returns
    the next state, which the caller persists after the chunk's bytes are on disk."""

    plan: ChunkPlan
    verified: frozenset[int] = frozenset()

    @classmethod
    def start(cls, plan: ChunkPlan, *, budget_bytes: int, entry: FileEntry | None = None) -> ReceiveState:
        """A fresh receiver; ChunkError when the file does not fit ``budget_bytes`` (the disk
        budget left for this transfer) or the plan is not for the signed ``entry``."""
        if entry is not None and not plan.matches(entry):
            raise ChunkError(f"{plan.path}: the chunk plan ({plan.size} bytes, sha256 "
                             f"{plan.sha256[:12]}) is not for the signed file ({entry.size} bytes, "
                             f"sha256 {entry.sha256[:12]})")
        if plan.size > budget_bytes:
            raise ChunkError(f"{plan.path}: {plan.size} bytes do not fit the disk budget of "
                             f"{budget_bytes} bytes")
        return cls(plan)

    @property
    def received_bytes(self) -> int:
        return sum(self.plan.span(i)[1] for i in self.verified)

    @property
    def complete(self) -> bool:
        return len(self.verified) == self.plan.count

    def missing(self) -> list[int]:
        """Chunk indexes still to fetch, in order (what to ask for after a restart)."""
        return [i for i in range(self.plan.count) if i not in self.verified]

    def accept(self, index: int, data: bytes) -> tuple[ChunkOutcome, ReceiveState]:
        """Check one received chunk; the state changes only on ACCEPTED."""
        if not 0 <= index < self.plan.count:
            return ChunkOutcome.OUT_OF_RANGE, self
        if index in self.verified:
            return ChunkOutcome.DUPLICATE, self
        if len(data) != self.plan.span(index)[1]:
            return ChunkOutcome.BAD_SIZE, self
        if hashlib.sha256(data).hexdigest() != self.plan.chunk_sha256[index]:
            return ChunkOutcome.BAD_HASH, self
        return ChunkOutcome.ACCEPTED, ReceiveState(self.plan, self.verified | {index})

    def finish(self, whole_sha256: str) -> WholeOutcome:
        """The assembled file's sha256 (hashed by the caller from disk) against the plan's."""
        if not self.complete:
            return WholeOutcome.INCOMPLETE
        return WholeOutcome.VERIFIED if whole_sha256 == self.plan.sha256 else WholeOutcome.BAD_HASH

    def to_json(self) -> str:
        return json.dumps({"plan": self.plan.to_json(), "verified": sorted(self.verified)})

    @classmethod
    def from_json(cls, text: str) -> ReceiveState:
        try:
            data = json.loads(text)
            plan = ChunkPlan.from_json(data["plan"])
            verified = frozenset(int(i) for i in data["verified"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ChunkError(f"receiver state is unreadable: {exc!r}") from exc
        if any(not 0 <= i < plan.count for i in verified):
            raise ChunkError(f"{plan.path}: receiver state names chunks outside the plan")
        return cls(plan, verified)
