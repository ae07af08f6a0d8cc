"""The shard contract: the ``lepton.shard-manifest`` v1 message and the MQTT 5 user properties
every shard message (manifest or chunk) carries (docs/contract.md)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.core.contract.wire import compact, decode_body

MANIFEST_SCHEMA = {"id": "lepton.shard-manifest", "version": 1}
MANIFEST = -1  # the chunk index that stands for the manifest message


@dataclass(frozen=True)
class OutgoingPart:
    """A chunk (``index >= 0``) or the manifest (``index == MANIFEST``) to publish."""

    blob: str
    index: int
    chunk_count: int
    size: int
    data: bytes
    kind: str
    content_type: str


def manifest_payload(*, blob: str, size: int, chunk_size: int, chunk_count: int, kind: str,
                     content_type: str, created_ns: int, expires_ns: int | None,
                     meta: Mapping[str, Any]) -> bytes:
    """The ``lepton.shard-manifest`` v1 message."""
    body = {"schema": MANIFEST_SCHEMA, "blob": blob, "size": size,
            "chunk_size": chunk_size, "chunk_count": chunk_count, "kind": kind,
            "content_type": content_type, "created_ns": created_ns, "expires_ns": expires_ns,
            "meta": dict(meta)}
    return compact(body, sort_keys=True)


def decode_manifest(payload: bytes) -> dict[str, Any]:
    """The JSON object of a ``lepton.shard-manifest`` v1 payload; ValueError says what is
    malformed."""
    return decode_body(payload, MANIFEST_SCHEMA)


def shard_properties(part: OutgoingPart) -> list[tuple[str, str]]:
    """The MQTT 5 user properties of a shard message (contract: docs/contract.md)."""
    props = [("lepton-part", "manifest" if part.index == MANIFEST else "chunk"),
             ("blob-sha256", part.blob), ("chunk-count", str(part.chunk_count)),
             ("blob-size", str(part.size)), ("kind", part.kind), ("content-type", part.content_type)]
    if part.index != MANIFEST:
        props += [("chunk-index", str(part.index)),
                  ("chunk-sha256", hashlib.sha256(part.data).hexdigest())]
    return props


def decode_shard_properties(props: Sequence[tuple[str, str]]) -> dict[str, str]:
    """The user properties as a mapping; ValueError on a name given twice."""
    out: dict[str, str] = {}
    for name, value in props:
        if name in out:
            raise ValueError(f"shard property {name!r} given twice")
        out[name] = value
    return out
