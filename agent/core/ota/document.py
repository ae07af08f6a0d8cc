"""The signed bundle document: what a model bundle's signature covers, in canonical bytes.

A signature file (``signature.json`` in the bundle folder) is an envelope around the exact
bytes that were signed::

    {"format": "lepton-bundle-signature/1", "key_id": "<16 hex>",
     "signature": "<base64 Ed25519 signature>", "document": "<canonical JSON text>"}

The document is parsed only after its signature verifies (verify the bytes, then read them),
so no second serialisation can disagree with what the signer saw. Pure data and logic: no
files and no cryptography here (the caller hands in a verify function, see
:mod:`agent.core.ota.verify`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

FORMAT = "lepton-bundle-signature/1"
SIGNATURE_FILE = "signature.json"
MANIFEST_FILE = "manifest.json"
# Domain separation: an Ed25519 signature made for this format cannot be replayed as a
# signature over some other message the same key signs (and vice versa).
SIGNING_CONTEXT = (FORMAT + "\n").encode("ascii")
# A signature file is a few KiB for a bundle of tens of files; anything far larger is refused
# before it is parsed (the "endless data" attack on the one unsigned read).
MAX_ENVELOPE_BYTES = 1 << 20

_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_DOC_KEYS = {"format", "model", "version", "manifest_sha256", "files", "issued_at", "expires_at",
             "key_id"}
_FILE_KEYS = {"path", "size", "sha256"}


class DocumentError(ValueError):
    """A signature envelope or document is not in the expected format."""


def key_id(public_key: bytes) -> str:
    """The id of a raw 32-byte Ed25519 public key: the first 16 hex digits of its sha256."""
    if len(public_key) != 32:
        raise DocumentError(f"an Ed25519 public key is 32 bytes, this one is {len(public_key)}")
    return hashlib.sha256(public_key).hexdigest()[:16]


def check_path(path: str) -> str:
    """A bundle file path as signed: relative, POSIX separators, no ``.``/``..`` or empty parts."""
    parts = path.split("/")
    if (not path or path.startswith("/") or "\\" in path or "\x00" in path
            or any(p in ("", ".", "..") for p in parts)):
        raise DocumentError(f"file path {path!r} is not a plain relative path inside the bundle")
    if path == SIGNATURE_FILE:
        raise DocumentError(f"{SIGNATURE_FILE} cannot be one of the signed files")
    return path


@dataclass(frozen=True)
class FileEntry:
    """One file of a bundle as signed (or as found on disk): path, size in bytes, sha256 hex."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class BundleDocument:
    """What a bundle signature covers. Times are integer Unix seconds (UTC)."""

    model: str
    version: int
    manifest_sha256: str
    files: tuple[FileEntry, ...]
    issued_at: int
    expires_at: int
    key_id: str

    def __post_init__(self) -> None:
        if not self.model or not isinstance(self.model, str):
            raise DocumentError("the model name is empty")
        if type(self.version) is not int or self.version < 1:
            raise DocumentError(f"bundle version {self.version!r} is not an integer >= 1")
        if not _HEX64.fullmatch(str(self.manifest_sha256)):
            raise DocumentError("manifest_sha256 is not 64 lowercase hex digits")
        for t in (self.issued_at, self.expires_at):
            if type(t) is not int or t < 0:
                raise DocumentError(f"time {t!r} is not a non-negative integer of Unix seconds")
        if self.expires_at <= self.issued_at:
            raise DocumentError(f"expires_at {self.expires_at} is not after issued_at {self.issued_at}")
        if not _KEY_ID.fullmatch(str(self.key_id)):
            raise DocumentError(f"key_id {self.key_id!r} is not 16 lowercase hex digits")
        paths = [f.path for f in self.files]
        if paths != sorted(set(paths)):
            raise DocumentError("files are not sorted by path without duplicates")
        for f in self.files:
            check_path(f.path)
            if type(f.size) is not int or f.size < 0 or not _HEX64.fullmatch(str(f.sha256)):
                raise DocumentError(f"file entry {f.path!r} needs a size >= 0 and a sha256 hex digest")
        if MANIFEST_FILE not in paths:
            raise DocumentError(f"the signed files do not include {MANIFEST_FILE}")
        manifest = next(f for f in self.files if f.path == MANIFEST_FILE)
        if manifest.sha256 != self.manifest_sha256:
            raise DocumentError("manifest_sha256 differs from the manifest.json file entry")

    @property
    def total_size(self) -> int:
        """Bytes of all signed files together (what a transfer needs on disk)."""
        return sum(f.size for f in self.files)

    def entry(self, path: str) -> FileEntry | None:
        return next((f for f in self.files if f.path == path), None)


def canonical_bytes(doc: BundleDocument) -> bytes:
    """The exact bytes that are signed: JSON, keys sorted, no whitespace, ASCII only."""
    data: dict[str, Any] = {
        "format": FORMAT, "model": doc.model, "version": doc.version,
        "manifest_sha256": doc.manifest_sha256,
        "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in doc.files],
        "issued_at": doc.issued_at, "expires_at": doc.expires_at, "key_id": doc.key_id,
    }
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def signed_message(document_bytes: bytes) -> bytes:
    """What the Ed25519 key signs: the format's context line, then the canonical document."""
    return SIGNING_CONTEXT + document_bytes


def parse_document(document_bytes: bytes) -> BundleDocument:
    """The document from its canonical bytes; refuses any other spelling of the same data."""
    try:
        data = json.loads(document_bytes.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise DocumentError(f"the signed document is not ASCII JSON: {exc}") from exc
    if not isinstance(data, dict) or set(data) != _DOC_KEYS:
        raise DocumentError(f"the signed document must have exactly the keys {sorted(_DOC_KEYS)}")
    if data["format"] != FORMAT:
        raise DocumentError(f"document format {data['format']!r} is not {FORMAT!r}")
    files = data["files"]
    if not isinstance(files, list) or not all(isinstance(f, dict) and set(f) == _FILE_KEYS
                                              for f in files):
        raise DocumentError(f"files must be a list of objects with the keys {sorted(_FILE_KEYS)}")
    if not isinstance(data["model"], str) or not all(isinstance(f["path"], str) for f in files):
        raise DocumentError("the model name and file paths must be strings")
    doc = BundleDocument(
        model=data["model"], version=data["version"], manifest_sha256=data["manifest_sha256"],
        files=tuple(FileEntry(f["path"], f["size"], f["sha256"]) for f in files),
        issued_at=data["issued_at"], expires_at=data["expires_at"], key_id=data["key_id"])
    if canonical_bytes(doc) != document_bytes:
        raise DocumentError("the signed document is not in canonical form")
    return doc


@dataclass(frozen=True)
class Envelope:
    """A signature file as read: which key signed, the signature, and the signed bytes."""

    key_id: str
    signature: bytes
    document: bytes


def encode_envelope(document_bytes: bytes, key: str, signature: bytes) -> bytes:
    """The signature file's bytes (JSON, indented so that a person can read the document)."""
    data = {"format": FORMAT, "key_id": key,
            "signature": base64.b64encode(signature).decode("ascii"),
            "document": document_bytes.decode("ascii")}
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("ascii")


def decode_envelope(raw: bytes) -> Envelope:
    """The envelope from a signature file's bytes; DocumentError when it is not one."""
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise DocumentError(f"signature file is {len(raw)} bytes, more than {MAX_ENVELOPE_BYTES}")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise DocumentError(f"signature file is not JSON: {exc}") from exc
    if not isinstance(data, dict) or set(data) != {"format", "key_id", "signature", "document"}:
        raise DocumentError("signature file must have exactly the keys document, format, key_id, "
                            "signature")
    if data["format"] != FORMAT:
        raise DocumentError(f"signature format {data['format']!r} is not {FORMAT!r}")
    if not isinstance(data["key_id"], str) or not _KEY_ID.fullmatch(data["key_id"]):
        raise DocumentError("key_id is not 16 lowercase hex digits")
    if not isinstance(data["document"], str) or not data["document"].isascii():
        raise DocumentError("document is not an ASCII string")
    try:
        signature = base64.b64decode(str(data["signature"]), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DocumentError(f"signature is not base64: {exc}") from exc
    if len(signature) != 64:
        raise DocumentError(f"an Ed25519 signature is 64 bytes, this one is {len(signature)}")
    return Envelope(data["key_id"], signature, data["document"].encode("ascii"))
