"""The ingest side of shards: validate each chunk and manifest, and write finished blobs.

Chunks may arrive in any order, twice, or through different ingest processes (a shared
subscription); the store keeps them until a blob has every chunk and its manifest, then the
blob is checked against its sha256, written to the blob directory and its metadata recorded.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.backend.decode import clean, decode_json
from agent.core.contract.shard import MANIFEST_SCHEMA
from agent.core.contract.topics import parse_topic
from agent.errors import RecordRejected

MAX_CHUNK = 1 << 20
MAX_BLOB = 1 << 31
_BLOB_ID = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ShardPart:
    """One validated shard message: a chunk (``index >= 0``) or the manifest (``index == -1``)."""

    device: str
    site: str
    blob: str
    index: int
    count: int
    size: int
    kind: str
    content_type: str
    data: bytes
    manifest: dict[str, Any] | None = None


def _int(props: dict[str, str], key: str, topic: str, low: int, high: int) -> int:
    try:
        value = int(props[key])
    except KeyError:
        raise RecordRejected(f"shard lacks user property {key!r}", topic=topic) from None
    except ValueError:
        raise RecordRejected(f"user property {key!r} is not an integer: {props[key]!r}",
                             topic=topic) from None
    if not low <= value <= high:
        raise RecordRejected(f"user property {key!r} = {value} outside [{low}, {high}]", topic=topic)
    return value


def _label(value: object, what: str, topic: str) -> str:
    """A short text (kind, content type) that any database column takes."""
    if not isinstance(value, str) or not 0 < len(value) <= 128 or "\x00" in value:
        raise RecordRejected(f"{what} must be text of 1-128 characters, not "
                             f"{clean(repr(value), 80)}", topic=topic)
    return value


def parse_shard(topic: str, properties: list[tuple[str, str]], payload: bytes) -> ShardPart:
    """Check a message on ``shards/{blob}`` against the contract; raise RecordRejected why not."""
    try:
        parsed = parse_topic(topic)
    except ValueError as exc:
        raise RecordRejected(str(exc), topic=topic) from exc
    blob = parsed.stream or ""
    if parsed.kind != "shards" or not _BLOB_ID.match(blob):
        raise RecordRejected("shard topic must end in shards/{sha256 hex of the blob}", topic=topic)
    props = dict(properties)
    if props.get("blob-sha256") != blob:
        raise RecordRejected(f"blob-sha256 {props.get('blob-sha256')!r} does not match the topic",
                             topic=topic)
    count = _int(props, "chunk-count", topic, 1, 1 << 24)
    size = _int(props, "blob-size", topic, 1, MAX_BLOB)
    kind = _label(props.get("kind", "blob"), "user property 'kind'", topic)
    content_type = _label(props.get("content-type", "application/octet-stream"),
                          "user property 'content-type'", topic)
    part = props.get("lepton-part")
    if part == "manifest":
        _, manifest = decode_json(topic, payload)
        if (not isinstance(manifest, dict)
                or manifest.get("schema") != MANIFEST_SCHEMA):
            raise RecordRejected("manifest lacks schema lepton.shard-manifest v1", topic=topic)
        for key, want in (("blob", blob), ("chunk_count", count), ("size", size)):
            if manifest.get(key) != want:
                raise RecordRejected(f"manifest {key} {clean(repr(manifest.get(key)), 80)} "
                                     f"disagrees with the message properties ({want!r})",
                                     topic=topic)
        for key in ("kind", "content_type"):
            if key in manifest:
                _label(manifest[key], f"manifest {key}", topic)
        if not isinstance(manifest.get("meta", {}), dict):
            raise RecordRejected("manifest meta must be an object", topic=topic)
        return ShardPart(parsed.device, parsed.site, blob, -1, count, size, kind, content_type,
                         b"", manifest)
    if part != "chunk":
        raise RecordRejected(f"lepton-part must be 'chunk' or 'manifest', not {part!r}",
                             topic=topic)
    index = _int(props, "chunk-index", topic, 0, count - 1)
    if not payload or len(payload) > MAX_CHUNK:
        raise RecordRejected(f"chunk of {len(payload)} bytes (1..{MAX_CHUNK} allowed)", topic=topic)
    if hashlib.sha256(payload).hexdigest() != props.get("chunk-sha256"):
        raise RecordRejected(f"chunk {index} of blob {blob[:12]}... fails its chunk-sha256",
                             topic=topic)
    return ShardPart(parsed.device, parsed.site, blob, index, count, size, kind, content_type,
                     payload)


class BlobDirectory:
    """Finished blobs as files ``{root}/{id[:2]}/{id}``, written atomically after a sha check."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, blob: str) -> Path:
        return self.root / blob[:2] / blob

    def write(self, blob: str, chunks: list[bytes]) -> Path | None:
        """Write the blob if its chunks hash to its id; None if they do not."""
        digest = hashlib.sha256()
        for chunk in chunks:
            digest.update(chunk)
        if digest.hexdigest() != blob:
            return None
        target = self.path(blob)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        return target
