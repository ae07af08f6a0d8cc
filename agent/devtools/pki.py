"""A certificate authority for a test fleet: a CA, and client (device, ingest, ctl) and broker
certificates it signs, through ``cryptography``.

Keys are ECDSA P-256: OpenSSL 3 (mosquitto's TLS, Python's ``ssl``) takes them for client and
server certificates on every version the fleet runs, where Ed25519 certificates need TLS 1.3
on both ends and an OpenSSL that advertises the ``ed25519`` signature algorithm. A client's
common name becomes its MQTT user name (mosquitto's ``use_identity_as_username``), so a name
must be a topic segment: the ACL's ``%u`` stands for the device segment of the topic.

Private keys are written with mode 0600, unencrypted PEM (the agent reads its key through
systemd's ``LoadCredential=tls-key``, which protects it on the device).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID as EKU
from cryptography.x509.oid import NameOID

from agent.core.contract.topics import check_segment
from agent.errors import AgentError

ROLES = ("device", "ingest", "ctl", "broker")
"""device, ingest, ctl: a TLS client certificate; broker: a TLS server certificate."""

CA_KEY = "ca.key"
CA_CERT = "ca.crt"


class PkiError(AgentError):
    """The test CA or a certificate cannot be made or read."""


@dataclass(frozen=True)
class Issued:
    """The files of one certificate: its PEM certificate and its PEM private key (0600)."""

    name: str
    role: str
    cert: Path
    key: Path
    not_before: dt.datetime
    not_after: dt.datetime


def _write(path: Path, data: bytes, *, private: bool, force: bool) -> None:
    """Write ``data`` to ``path`` atomically; a private key is 0600 from its first byte."""
    if path.exists() and not force:
        raise PkiError(f"{path} already exists",
                       fix="choose another --out folder, or pass --force to replace it")
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _out_dir(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PkiError(f"cannot create the folder {out}: {exc.strerror}",
                       fix="give a writable --out folder") from exc
    return out


def check_name(name: str) -> str:
    """``name`` if it can be an MQTT user name under the ACL (a topic segment), else PkiError."""
    try:
        return check_segment("certificate name", name)
    except ValueError as exc:
        raise PkiError(str(exc), fix="a certificate's name is the device id (or lepton-ingest, "
                                     "lepton-ctl): the broker uses it as the MQTT user name "
                                     "in the topic ACL") from None


def init_ca(out: Path, *, name: str = "lepton-test-ca", days: int = 3650,
            force: bool = False) -> Issued:
    """Make a CA (key and self-signed certificate) in ``out``: ``ca.key``, ``ca.crt``."""
    if days < 1:
        raise PkiError(f"--days {days}: must be at least 1", fix="give --days 1 or more")
    out = _out_dir(out)
    for existing in (out / CA_KEY, out / CA_CERT):
        if existing.exists() and not force:
            raise PkiError(f"{existing} already exists: a CA lives there",
                           fix="choose another --out folder, or pass --force to replace the "
                               "CA (every certificate it signed stops being trusted)")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    not_before, not_after = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    _write(out / CA_KEY, key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()),
           private=True, force=True)
    _write(out / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), private=False,
           force=True)
    return Issued(name, "ca", out / CA_CERT, out / CA_KEY, not_before, not_after)


def _load_ca(ca_dir: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key_path, cert_path = ca_dir / CA_KEY, ca_dir / CA_CERT
    for path in (key_path, cert_path):
        if not path.is_file():
            raise PkiError(f"no CA in {ca_dir}: {path.name} is missing",
                           fix=f"run 'lepton-agent pki init --out {ca_dir}' first, or give the "
                               "folder it wrote with --ca")
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (ValueError, TypeError, OSError) as exc:
        # The message of a key parse error names no key bytes; keep only its first line.
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PkiError(f"cannot read the CA in {ca_dir}: {first}",
                       fix="--ca takes the folder written by 'lepton-agent pki init'") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{key_path} is not an ECDSA key",
                       fix="make the CA with 'lepton-agent pki init'")
    return key, cert


def issue(name: str, ca_dir: Path, out: Path, *, role: str = "device", days: int = 365,
          not_before: dt.datetime | None = None, hosts: tuple[str, ...] = (),
          force: bool = False) -> Issued:
    """Sign a certificate for ``name`` with the CA in ``ca_dir``; write ``NAME.crt`` and
    ``NAME.key`` (0600) into ``out``.

    ``role`` device, ingest or ctl: a TLS client certificate whose common name is ``name``
    (the MQTT user name). ``broker``: a TLS server certificate for ``hosts`` (IP addresses or
    DNS names; default 127.0.0.1 and localhost). ``not_before`` (default now) with ``days``
    sets the validity window; one in the past makes an expired certificate for tests."""
    if role not in ROLES:
        raise PkiError(f"unknown role {role!r}", fix=f"use one of {', '.join(ROLES)}")
    if days < 1:
        raise PkiError(f"--days {days}: must be at least 1", fix="give --days 1 or more")
    check_name(name)
    ca_key, ca_cert = _load_ca(ca_dir)
    out = _out_dir(out)
    cert_path, key_path = out / f"{name}.crt", out / f"{name}.key"
    for existing in (cert_path, key_path):
        if existing.exists() and not force:
            raise PkiError(f"{existing} already exists",
                           fix="choose another --out folder, or pass --force to replace it")
    start = not_before or dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    end = start + dt.timedelta(days=days)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_agreement=True,
                                            key_cert_sign=False, crl_sign=False,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage(
                   [EKU.SERVER_AUTH] if role == "broker" else [EKU.CLIENT_AUTH]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False))
    if role == "broker":
        names: list[x509.GeneralName] = []
        for host in hosts or ("127.0.0.1", "localhost"):
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    elif hosts:
        raise PkiError("--host applies to broker certificates only",
                       fix="drop --host, or use --role broker")
    cert = builder.sign(ca_key, hashes.SHA256())
    _write(key_path, key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), private=True, force=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False, force=True)
    return Issued(name, role, cert_path, key_path, start, end)
