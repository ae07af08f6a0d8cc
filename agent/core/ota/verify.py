"""Device-side decisions on a signed model bundle: is it authentic, new, unexpired and whole?

Every refusal is a :class:`Refusal` with a typed :class:`Reason`, a message naming the thing and
a fix. The checks run in two stages so that a device can refuse a document before it fetches
the bundle's bytes:

1. :func:`check_document` (the signature file alone): the format, a trusted key, the Ed25519
   signature, the model name, anti-rollback, expiry against the trusted clock;
2. :func:`check_files` (the files as received): the manifest, then missing, extra, changed and
   non-regular files (mix-and-match).

:func:`verify_bundle` runs both. Pure logic: the caller reads the files, hashes them, holds the
persisted state (:class:`RollbackCounters`, :class:`~agent.core.ota.clock.TrustedClock`) and
passes in the signature check (``agent.ota.keys.ed25519_verify``), so that core imports no
cryptography library.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from agent.core.ota.clock import TrustedClock
from agent.core.ota.document import (
    MANIFEST_FILE,
    BundleDocument,
    DocumentError,
    FileEntry,
    decode_envelope,
    key_id,
    parse_document,
    signed_message,
)

# (raw 32-byte public key, message, signature) -> the signature is valid for that key
SignatureCheck = Callable[[bytes, bytes, bytes], bool]


class Reason(str, enum.Enum):
    """Why a bundle is refused. The value is the stable word printed and reported."""

    MALFORMED = "malformed"              # the signature file or document is not in the format
    UNKNOWN_KEY = "unknown_key"          # signed by a key the device does not trust
    BAD_SIGNATURE = "bad_signature"      # the signature does not verify (document edited, forged)
    WRONG_MODEL = "wrong_model"          # a valid bundle of another model than the one asked for
    ROLLBACK = "rollback"                # version at or below the installed one (replay, downgrade)
    EXPIRED = "expired"                  # the document's expires_at has passed (trusted clock)
    MANIFEST_CHANGED = "manifest_changed"  # manifest.json differs from the signed one
    MISSING_FILE = "missing_file"        # a signed file is not in the bundle
    EXTRA_FILE = "extra_file"            # a file in the bundle that was not signed
    FILE_CHANGED = "file_changed"        # a file's size or sha256 differs from the signed one
    UNSAFE_FILE = "unsafe_file"          # a symlink, device or other non-regular file


@dataclass(frozen=True)
class Refusal:
    """One refusal: the typed reason, what is wrong (naming the thing) and what to do."""

    reason: Reason
    message: str
    fix: str

    def __str__(self) -> str:
        return f"[{self.reason.value}] {self.message} (fix: {self.fix})"


@dataclass(frozen=True)
class TrustedKeys:
    """The public keys a device accepts, by key id. Rotation: ship the new key beside the old
    one, re-sign, then drop the old key; both verify while both are listed."""

    keys: Mapping[str, bytes] = field(default_factory=dict)

    @classmethod
    def of(cls, raw_keys: Iterable[bytes]) -> TrustedKeys:
        """From raw 32-byte Ed25519 public keys (duplicates collapse)."""
        return cls({key_id(k): bytes(k) for k in raw_keys})

    def ids(self) -> list[str]:
        return sorted(self.keys)


@dataclass(frozen=True)
class RollbackCounters:
    """The highest installed bundle version per model name (the anti-rollback counter).

    Persisted by the runtime: it calls :meth:`installed` after it commits a new model, and
    stores :meth:`to_json`. A model never installed counts as version 0."""

    versions: Mapping[str, int] = field(default_factory=dict)

    def version(self, model: str) -> int:
        return self.versions.get(model, 0)

    def installed(self, model: str, version: int) -> RollbackCounters:
        """The counters after ``model`` at ``version`` is installed; never lowers a counter."""
        merged = dict(self.versions)
        merged[model] = max(self.version(model), version)
        return RollbackCounters(merged)

    def to_json(self) -> str:
        return json.dumps(dict(sorted(self.versions.items())))

    @classmethod
    def from_json(cls, text: str) -> RollbackCounters:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"rollback counters are not JSON: {exc}") from exc
        if not isinstance(data, dict) or not all(
                isinstance(k, str) and type(v) is int and v >= 0 for k, v in data.items()):
            raise ValueError("rollback counters must map model names to integers >= 0")
        return cls(data)


@dataclass(frozen=True)
class ObservedBundle:
    """A bundle folder as found: its regular files (path, size, sha256; the signature file
    left out) and the paths of anything that is not a regular file."""

    files: tuple[FileEntry, ...]
    irregular: tuple[str, ...] = ()


@dataclass(frozen=True)
class Verdict:
    """The outcome. ``document`` is set once the signature verified (even when a later check
    refused it); ``clock`` is the trusted clock to persist (it learned the document's
    ``issued_at`` once the signature verified); ``counters`` is what to persist once the
    runtime has installed this bundle (unchanged on a refusal)."""

    refusal: Refusal | None
    document: BundleDocument | None
    clock: TrustedClock
    counters: RollbackCounters
    trusted_now: float

    @property
    def accepted(self) -> bool:
        return self.refusal is None


def _refuse(reason: Reason, message: str, fix: str) -> Refusal:
    return Refusal(reason, message, fix)


def check_document(envelope_bytes: bytes, *, trust: TrustedKeys, check_signature: SignatureCheck,
                   counters: RollbackCounters, clock: TrustedClock, device_now: float,
                   expected_model: str | None = None) -> Verdict:
    """Stage 1: the signature file alone. See the module docstring for the order of checks."""
    trusted_now, clock = clock.now(device_now)

    def verdict(refusal: Refusal | None, doc: BundleDocument | None = None) -> Verdict:
        new_counters = counters.installed(doc.model, doc.version) if doc and not refusal else counters
        return Verdict(refusal, doc, clock, new_counters, trusted_now)

    try:
        envelope = decode_envelope(envelope_bytes)
    except DocumentError as exc:
        return verdict(_refuse(Reason.MALFORMED, f"signature file unreadable: {exc}",
                               "sign the bundle again with `lepton-agent models sign`"))
    public = trust.keys.get(envelope.key_id)
    if public is None:
        trusted = ", ".join(trust.ids()) or "none"
        return verdict(_refuse(Reason.UNKNOWN_KEY,
                               f"signed by key {envelope.key_id}, which is not trusted "
                               f"(trusted: {trusted})",
                               "sign with a trusted key, or add the signer's public key to the "
                               "trusted keys"))
    if not check_signature(public, signed_message(envelope.document), envelope.signature):
        return verdict(_refuse(Reason.BAD_SIGNATURE,
                               f"the signature by key {envelope.key_id} does not match the "
                               "document (edited after signing, or forged)",
                               "use the bundle as it was signed, or sign it again"))
    try:
        doc = parse_document(envelope.document)
    except DocumentError as exc:
        return verdict(_refuse(Reason.MALFORMED, f"signed document unreadable: {exc}",
                               "sign the bundle again with this version's `lepton-agent models sign`"))
    if doc.key_id != envelope.key_id:
        return verdict(_refuse(Reason.MALFORMED,
                               f"document names key {doc.key_id} but was signed by {envelope.key_id}",
                               "sign the bundle again with `lepton-agent models sign`"), doc)
    # The signature is good: the document is evidence of the time it was issued.
    clock = clock.learn(doc.issued_at)
    trusted_now = max(trusted_now, clock.floor)
    if expected_model is not None and doc.model != expected_model:
        return verdict(_refuse(Reason.WRONG_MODEL,
                               f"bundle is model {doc.model!r}, not the expected {expected_model!r}",
                               f"deploy a bundle of {expected_model!r}"), doc)
    installed = counters.version(doc.model)
    if doc.version <= installed:
        return verdict(_refuse(Reason.ROLLBACK,
                               f"model {doc.model!r} version {doc.version} is not newer than the "
                               f"installed version {installed}",
                               f"sign the bundle with --version {installed + 1} or higher"), doc)
    if trusted_now >= doc.expires_at:
        return verdict(_refuse(Reason.EXPIRED,
                               f"the document expired at {doc.expires_at} (Unix s); trusted time is "
                               f"{int(trusted_now)}",
                               "sign the bundle again with a later --expires"), doc)
    return verdict(None, doc)


def check_files(doc: BundleDocument, observed: ObservedBundle) -> Refusal | None:
    """Stage 2: the received files against the signed list (None when they match exactly)."""
    found = {f.path: f for f in observed.files}
    if observed.irregular:
        return _refuse(Reason.UNSAFE_FILE,
                       f"not a regular file: {', '.join(sorted(observed.irregular))}",
                       "a bundle holds only regular files; replace links with the files")
    manifest = found.get(MANIFEST_FILE)
    if manifest is None or manifest.sha256 != doc.manifest_sha256:
        what = "is missing" if manifest is None else "differs from the signed one"
        return _refuse(Reason.MANIFEST_CHANGED, f"{MANIFEST_FILE} {what}",
                       "restore the signed manifest, or sign the bundle again after editing it")
    signed = {f.path: f for f in doc.files}
    missing = sorted(set(signed) - set(found))
    if missing:
        return _refuse(Reason.MISSING_FILE, f"signed file(s) missing: {', '.join(missing)}",
                       "copy the whole signed bundle")
    extra = sorted(set(found) - set(signed))
    if extra:
        return _refuse(Reason.EXTRA_FILE, f"file(s) not covered by the signature: {', '.join(extra)}",
                       "remove them, or sign the bundle again with them")
    for path, entry in sorted(signed.items()):
        got = found[path]
        if got.size != entry.size or got.sha256 != entry.sha256:
            return _refuse(Reason.FILE_CHANGED,
                           f"{path} differs from the signed file (size {got.size} vs {entry.size}, "
                           f"sha256 {got.sha256[:12]} vs {entry.sha256[:12]})",
                           "copy the signed file again (corrupted or tampered), or sign again")
    return None


def verify_bundle(envelope_bytes: bytes, observed: ObservedBundle, *, trust: TrustedKeys,
                  check_signature: SignatureCheck, counters: RollbackCounters, clock: TrustedClock,
                  device_now: float, expected_model: str | None = None) -> Verdict:
    """Both stages: the document, then (when it passed) the files."""
    verdict = check_document(envelope_bytes, trust=trust, check_signature=check_signature,
                             counters=counters, clock=clock, device_now=device_now,
                             expected_model=expected_model)
    if verdict.refusal is not None or verdict.document is None:
        return verdict
    refusal = check_files(verdict.document, observed)
    if refusal is None:
        return verdict
    return Verdict(refusal, verdict.document, verdict.clock, counters, verdict.trusted_now)
