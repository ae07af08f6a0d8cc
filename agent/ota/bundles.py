"""A model bundle folder on disk: hash its files, sign it, verify it, chunk a file of it.

The decisions are :mod:`agent.core.ota`'s; this module reads and writes the files and makes the
Ed25519 calls (:mod:`agent.ota.keys`)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from agent.core.ota.chunks import DEFAULT_CHUNK_SIZE, ChunkPlan, plan_chunks
from agent.core.ota.clock import TrustedClock
from agent.core.ota.document import (
    MANIFEST_FILE,
    MAX_ENVELOPE_BYTES,
    SIGNATURE_FILE,
    BundleDocument,
    DocumentError,
    FileEntry,
    canonical_bytes,
    check_path,
    decode_envelope,
    encode_envelope,
    key_id,
    parse_document,
    signed_message,
)
from agent.core.ota.verify import (
    ObservedBundle,
    RollbackCounters,
    TrustedKeys,
    Verdict,
    verify_bundle,
)
from agent.ota.keys import OtaError, ed25519_verify, load_private, raw_public

DAY_S = 86_400
DEFAULT_EXPIRES_DAYS = 30
_READ = 1 << 20


def sha256_file(path: Path) -> tuple[int, str]:
    """(size, sha256 hex) of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        for piece in iter(lambda: fh.read(_READ), b""):
            digest.update(piece)
            size += len(piece)
    return size, digest.hexdigest()


def _require_dir(bundle: Path) -> None:
    if not bundle.is_dir():
        what = "does not exist" if not bundle.exists() else "is not a folder"
        raise OtaError(f"bundle {what}", path=bundle,
                       fix="give the model bundle folder (manifest.json and the model file)")


def scan(bundle: Path) -> ObservedBundle:
    """Every file under ``bundle`` except the signature file: regular files hashed, anything
    else (symlinks, devices, fifos) listed as irregular; nothing is followed."""
    _require_dir(bundle)
    files: list[FileEntry] = []
    irregular: list[str] = []
    try:
        for root, dirs, names in os.walk(bundle, followlinks=False):
            base = Path(root)
            for name in sorted(names) + [d for d in dirs if (base / d).is_symlink()]:
                path = base / name
                rel = path.relative_to(bundle).as_posix()
                if rel == SIGNATURE_FILE:
                    continue
                mode = path.lstat().st_mode
                if not stat.S_ISREG(mode):
                    irregular.append(rel)
                    continue
                size, digest = sha256_file(path)
                files.append(FileEntry(rel, size, digest))
    except OSError as exc:
        raise OtaError(f"cannot read the bundle: {exc.strerror or exc} ({exc.filename})", path=bundle,
                       fix="make every file of the bundle readable") from exc
    return ObservedBundle(tuple(sorted(files, key=lambda f: f.path)), tuple(sorted(irregular)))


def _manifest_name(bundle: Path) -> str:
    path = bundle / MANIFEST_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise OtaError(f"no {MANIFEST_FILE}", path=bundle,
                       fix="a signed bundle is a folder with manifest.json and the model file") from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise OtaError(f"is not readable JSON: {exc}", path=path,
                       fix="fix the manifest before signing") from exc
    name = data.get("name") if isinstance(data, dict) else None
    if not isinstance(name, str) or not name:
        raise OtaError("has no \"name\"", path=path, fix="give the manifest the model's name")
    return name


def sign(bundle: Path, key_path: Path, *, version: int, now: float,
         expires_days: float = DEFAULT_EXPIRES_DAYS) -> tuple[Path, BundleDocument]:
    """Write ``bundle/signature.json`` covering every file of the bundle; returns its path and
    the signed document."""
    if version < 1:
        raise OtaError(f"version {version} is not >= 1", path=bundle,
                       fix="give --version a positive integer, higher than any signed before")
    if not expires_days > 0:
        raise OtaError(f"--expires {expires_days} days is not > 0", path=bundle,
                       fix="give --expires a positive number of days")
    key = load_private(key_path)
    model = _manifest_name(bundle)
    out = bundle / SIGNATURE_FILE
    tmp = out.with_name(f".{SIGNATURE_FILE}.tmp")
    try:
        tmp.unlink(missing_ok=True)  # left by a sign that died mid-write; not part of the bundle
    except OSError as exc:
        raise OtaError(f"cannot remove a stale {tmp.name}: {exc.strerror}", path=bundle,
                       fix="make the bundle folder writable") from exc
    observed = scan(bundle)
    if observed.irregular:
        raise OtaError(f"not regular files: {', '.join(observed.irregular)}", path=bundle,
                       fix="replace links with the files they point to")
    manifest = next(f for f in observed.files if f.path == MANIFEST_FILE)
    issued = int(now)
    try:
        for f in observed.files:
            check_path(f.path)
        doc = BundleDocument(model=model, version=version, manifest_sha256=manifest.sha256,
                             files=observed.files, issued_at=issued,
                             expires_at=issued + max(1, int(expires_days * DAY_S)),
                             key_id=key_id(raw_public(key.public_key())))
    except DocumentError as exc:
        raise OtaError(f"cannot be signed: {exc}", path=bundle, fix="rename the offending file") from exc
    body = canonical_bytes(doc)
    envelope = encode_envelope(body, doc.key_id, key.sign(signed_message(body)))
    try:
        tmp.write_bytes(envelope)
        os.replace(tmp, out)
    except OSError as exc:
        raise OtaError(f"cannot write the signature: {exc.strerror}", path=out,
                       fix="make the bundle folder writable") from exc
    return out, doc


def read_envelope(bundle: Path) -> bytes:
    """The signature file's bytes (bounded: a huge file is refused as malformed by core)."""
    _require_dir(bundle)
    path = bundle / SIGNATURE_FILE
    try:
        with path.open("rb") as fh:
            return fh.read(MAX_ENVELOPE_BYTES + 1)
    except FileNotFoundError as exc:
        raise OtaError(f"no {SIGNATURE_FILE}: the bundle is not signed", path=bundle,
                       fix="sign it with `lepton-agent models sign`") from exc
    except OSError as exc:
        raise OtaError(f"cannot read the signature: {exc.strerror}", path=path,
                       fix="make the signature file readable") from exc


def claimed_model(bundle: Path) -> str | None:
    """The model name the signature file claims, NOT verified (None when unreadable): only to
    pick which rollback counter to hand to :func:`verify`, which checks the signature."""
    try:
        return parse_document(decode_envelope(read_envelope(bundle)).document).model
    except (DocumentError, OtaError):
        return None


def verify(bundle: Path, trust: TrustedKeys, *, counters: RollbackCounters, clock: TrustedClock,
           device_now: float, expected_model: str | None = None) -> Verdict:
    """Verify a bundle folder as the device does; OtaError only when it cannot be read."""
    envelope = read_envelope(bundle)
    return verify_bundle(envelope, scan(bundle), trust=trust, check_signature=ed25519_verify,
                         counters=counters, clock=clock, device_now=device_now,
                         expected_model=expected_model)


def iter_chunks(path: Path, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
    """A file's bytes in consecutive pieces of ``chunk_size`` (the last may be shorter)."""
    with path.open("rb") as fh:
        while True:
            piece = fh.read(chunk_size)
            if not piece:
                return
            while len(piece) < chunk_size:  # a short read before the end of the file
                more = fh.read(chunk_size - len(piece))
                if not more:
                    break
                piece += more
            yield piece


def plan_file(bundle: Path, rel: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> ChunkPlan:
    """The sender's chunk plan for one file of a bundle."""
    try:
        return plan_chunks(rel, iter_chunks(bundle / rel, chunk_size), chunk_size)
    except OSError as exc:
        raise OtaError(f"cannot read {rel}: {exc.strerror}", path=bundle,
                       fix="make the bundle's files readable") from exc
