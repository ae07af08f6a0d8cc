"""Ed25519 keys for bundle signing: make a pair, read them, sign and verify.

The private key is PKCS#8 PEM, unencrypted (a CI signer or an HSM-less release box reads it
non-interactively; keep it off devices), created with mode 0600 so it is never readable by
others, not even for a moment. The public key is SubjectPublicKeyInfo PEM."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.core.ota.document import key_id
from agent.core.ota.verify import TrustedKeys
from agent.errors import AgentError

PRIVATE_NAME = "signing.key"
PUBLIC_NAME = "signing.pub"


class OtaError(AgentError):
    """A key, bundle or signature file cannot be made, read or used."""

    def __init__(self, message: str, *, path: str | Path, fix: str | None = None) -> None:
        super().__init__(f"{path}: {message}", fix=fix)
        self.path = str(path)


@dataclass(frozen=True)
class KeyPair:
    """Where ``keygen`` wrote the pair, and the public key's id."""

    private: Path
    public: Path
    key_id: str


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def generate(out_dir: Path) -> KeyPair:
    """Write a new ``signing.key`` (0600) and ``signing.pub`` into ``out_dir``; refuses to
    overwrite an existing key (a lost signing key cannot be recovered)."""
    private_path, public_path = out_dir / PRIVATE_NAME, out_dir / PUBLIC_NAME
    for path in (private_path, public_path):
        if path.exists() or path.is_symlink():
            raise OtaError("already exists; keygen does not overwrite a key", path=path,
                           fix="choose another --out folder, or move the old pair away first")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OtaError(f"cannot create the folder: {exc.strerror}", path=out_dir,
                       fix="give a writable --out folder") from exc
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        # O_EXCL|0600 at creation: the key is never on disk with wider permissions.
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.fchmod(fd, 0o600)  # exactly 0600 whatever the umask (a 0277 umask would leave 0400)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        public_path.write_bytes(pub)
    except OSError as exc:
        raise OtaError(f"cannot write the key: {exc.strerror}", path=out_dir,
                       fix="give a writable --out folder") from exc
    return KeyPair(private_path, public_path, key_id(raw_public(key.public_key())))


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise OtaError(f"cannot read the {what}: {exc.strerror or exc}", path=path,
                       fix=f"give the path of a {what} made by `lepton-agent models keygen`") from exc


def load_private(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in a PEM file."""
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise OtaError("is not an unencrypted PEM private key", path=path,
                       fix="give the signing.key made by `lepton-agent models keygen`") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise OtaError(f"is a {type(key).__name__.lstrip('_')}, not an Ed25519 key", path=path,
                       fix="give the signing.key made by `lepton-agent models keygen`")
    return key


def load_public(path: Path) -> bytes:
    """The raw 32 bytes of the Ed25519 public key in a PEM file."""
    data = _read(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise OtaError("is not a PEM public key", path=path,
                       fix="give the signing.pub made by `lepton-agent models keygen`") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise OtaError(f"is a {type(key).__name__.lstrip('_')}, not an Ed25519 key", path=path,
                       fix="give the signing.pub made by `lepton-agent models keygen`")
    return raw_public(key)


def load_trust(paths: list[Path]) -> TrustedKeys:
    """The trusted keys from public key files (a rotation lists the old and the new)."""
    return TrustedKeys.of(load_public(p) for p in paths)


def ed25519_verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """The signature check core's verification takes (``SignatureCheck``)."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
