"""Signed model bundles (issue 18 item 3): keygen, sign, verify, each tampering refused with its
reason, key rotation, and the chunked transfer's receiver.

The independent reference is ``cryptography`` and ``hashlib`` called here directly: the test
checks signature.json's signature and file hashes itself, not through agent.ota."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.ota.chunks import ChunkError, ChunkOutcome, ChunkPlan, ReceiveState, WholeOutcome, plan_chunks
from agent.core.ota.clock import TrustedClock
from agent.core.ota.document import (
    FORMAT,
    BundleDocument,
    DocumentError,
    FileEntry,
    canonical_bytes,
    encode_envelope,
    parse_document,
    signed_message,
)
from agent.core.ota.verify import Reason, RollbackCounters, TrustedKeys, check_document
from agent.ota import bundles, keys
from agent.ota.keys import OtaError
from tests.conftest import ROOT, agent_cmd

NOW = 1_790_000_000.0  # 2026-09: a fixed "device clock" for the API tests
DAY = 86_400


def make_bundle(root: Path, name: str = "demo-detector") -> Path:
    bundle = root / "bundle"
    bundle.mkdir(parents=True)
    (bundle / "manifest.json").write_text(json.dumps({"name": name, "task": "detection",
                                                      "decoder": "grid", "file": "model.tflite"}))
    (bundle / "model.tflite").write_bytes(os.urandom(300_000))
    (bundle / "labels").mkdir()
    (bundle / "labels" / "labels.txt").write_text("car\ntruck\n")
    return bundle


@pytest.fixture
def pair(tmp_path: Path) -> keys.KeyPair:
    return keys.generate(tmp_path / "keys")


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path)


def verify(bundle: Path, *pubs: Path, installed: int = 0, device_now: float = NOW,
           clock: TrustedClock | None = None, model: str | None = None) -> bundles.Verdict:
    counters = RollbackCounters({"demo-detector": installed})
    return bundles.verify(bundle, keys.load_trust(list(pubs)), counters=counters,
                          clock=clock or TrustedClock(), device_now=device_now, expected_model=model)


# -- keys and the signature file, checked independently -------------------------------------------

def test_keygen_writes_a_0600_private_key_and_a_public_key(tmp_path: Path) -> None:
    pair = keys.generate(tmp_path / "k")
    assert stat.S_IMODE(pair.private.stat().st_mode) == 0o600
    private = serialization.load_pem_private_key(pair.private.read_bytes(), password=None)
    public = serialization.load_pem_public_key(pair.public.read_bytes())
    assert isinstance(private, Ed25519PrivateKey) and isinstance(public, Ed25519PublicKey)
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert private.public_key().public_bytes(serialization.Encoding.Raw,
                                             serialization.PublicFormat.Raw) == raw
    assert pair.key_id == hashlib.sha256(raw).hexdigest()[:16]
    with pytest.raises(OtaError, match="already exists"):
        keys.generate(tmp_path / "k")
    assert pair.private.read_bytes() == private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def test_signature_covers_every_file_the_manifest_and_the_version(bundle: Path,
                                                                  pair: keys.KeyPair) -> None:
    path, _ = bundles.sign(bundle, pair.private, version=7, now=NOW, expires_days=2)
    envelope = json.loads(path.read_text())
    body = envelope["document"].encode("ascii")
    public = serialization.load_pem_public_key(pair.public.read_bytes())
    assert isinstance(public, Ed25519PublicKey)
    public.verify(base64.b64decode(envelope["signature"]), (FORMAT + "\n").encode() + body)  # raises if bad
    doc = json.loads(body)
    expected = sorted(
        ({"path": p.relative_to(bundle).as_posix(), "size": p.stat().st_size,
          "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
         for p in bundle.rglob("*") if p.is_file() and p.name != "signature.json"),
        key=lambda f: str(f["path"]))
    assert doc["files"] == expected and len(expected) == 3
    assert doc["manifest_sha256"] == hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    assert (doc["model"], doc["version"], doc["key_id"]) == ("demo-detector", 7, pair.key_id)
    assert (doc["issued_at"], doc["expires_at"]) == (int(NOW), int(NOW) + 2 * DAY)
    assert body == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def test_a_valid_bundle_verifies_and_says_what_to_persist(bundle: Path, pair: keys.KeyPair) -> None:
    bundles.sign(bundle, pair.private, version=4, now=NOW)
    verdict = verify(bundle, pair.public, installed=3, device_now=NOW + 60)
    assert verdict.accepted and verdict.refusal is None
    assert verdict.document is not None and verdict.document.version == 4
    assert verdict.counters.version("demo-detector") == 4  # to persist after the install
    assert verdict.clock.learned == int(NOW) and verdict.clock.floor == NOW + 60


# -- tampering: each refused with its own reason --------------------------------------------------

def flip_bit(bundle: Path, _: Path) -> None:
    data = bytearray((bundle / "model.tflite").read_bytes())
    data[123_456] ^= 0x10
    (bundle / "model.tflite").write_bytes(bytes(data))


def add_file(bundle: Path, _: Path) -> None:
    (bundle / "labels" / "extra.txt").write_text("bus\n")


def remove_file(bundle: Path, _: Path) -> None:
    (bundle / "labels" / "labels.txt").unlink()


def edit_manifest(bundle: Path, _: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["score_threshold"] = 0.01
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def edit_document(bundle: Path, _: Path) -> None:
    envelope = json.loads((bundle / "signature.json").read_text())
    envelope["document"] = envelope["document"].replace('"version":5', '"version":50')
    assert '"version":50' in envelope["document"]
    (bundle / "signature.json").write_text(json.dumps(envelope))


def symlink_model(bundle: Path, tmp: Path) -> None:
    real = tmp / "elsewhere.tflite"
    shutil.move(bundle / "model.tflite", real)
    (bundle / "model.tflite").symlink_to(real)  # same bytes, but a link the device must not follow


def garbage_signature(bundle: Path, _: Path) -> None:
    (bundle / "signature.json").write_bytes(b"\x00\xff" * 100)


TAMPERING = [
    (flip_bit, Reason.FILE_CHANGED, "model.tflite differs"),
    (add_file, Reason.EXTRA_FILE, "labels/extra.txt"),
    (remove_file, Reason.MISSING_FILE, "labels/labels.txt"),
    (edit_manifest, Reason.MANIFEST_CHANGED, "manifest.json differs"),
    (edit_document, Reason.BAD_SIGNATURE, "does not match the document"),
    (symlink_model, Reason.UNSAFE_FILE, "model.tflite"),
    (garbage_signature, Reason.MALFORMED, "signature file unreadable"),
]


@pytest.mark.parametrize(("tamper", "reason", "names"), TAMPERING, ids=lambda v: getattr(v, "__name__", ""))
def test_tampering_is_refused_with_its_reason(tmp_path: Path, bundle: Path, pair: keys.KeyPair,
                                              tamper, reason: Reason, names: str) -> None:
    bundles.sign(bundle, pair.private, version=5, now=NOW)
    assert verify(bundle, pair.public).accepted
    tamper(bundle, tmp_path)
    verdict = verify(bundle, pair.public)
    assert verdict.refusal is not None and verdict.refusal.reason is reason, verdict.refusal
    assert names in verdict.refusal.message and verdict.refusal.fix
    assert verdict.counters.version("demo-detector") == 0  # nothing to persist on a refusal


def test_a_wrong_key_is_refused(bundle: Path, pair: keys.KeyPair, tmp_path: Path) -> None:
    other = keys.generate(tmp_path / "other")
    bundles.sign(bundle, other.private, version=5, now=NOW)
    refusal = verify(bundle, pair.public).refusal
    assert refusal is not None and refusal.reason is Reason.UNKNOWN_KEY
    assert other.key_id in refusal.message and pair.key_id in refusal.message


def test_a_forged_key_id_is_a_bad_signature(bundle: Path, pair: keys.KeyPair) -> None:
    """An attacker names the trusted key's id but signs with their own key."""
    bundles.sign(bundle, pair.private, version=5, now=NOW)
    envelope = json.loads((bundle / "signature.json").read_text())
    doc = parse_document(envelope["document"].encode())
    forged = BundleDocument(doc.model, 99, doc.manifest_sha256, doc.files, doc.issued_at,
                            doc.expires_at, doc.key_id)
    body = canonical_bytes(forged)
    attacker = Ed25519PrivateKey.generate()
    (bundle / "signature.json").write_bytes(encode_envelope(body, doc.key_id,
                                                            attacker.sign(signed_message(body))))
    refusal = verify(bundle, pair.public).refusal
    assert refusal is not None and refusal.reason is Reason.BAD_SIGNATURE


@pytest.mark.parametrize("installed", [5, 9])
def test_a_replayed_or_older_version_is_refused(bundle: Path, pair: keys.KeyPair, installed: int) -> None:
    bundles.sign(bundle, pair.private, version=5, now=NOW)
    assert verify(bundle, pair.public, installed=4).accepted
    refusal = verify(bundle, pair.public, installed=installed).refusal
    assert refusal is not None and refusal.reason is Reason.ROLLBACK
    assert f"installed version {installed}" in refusal.message and f"--version {installed + 1}" in refusal.fix


def test_the_counter_is_per_model(bundle: Path, pair: keys.KeyPair) -> None:
    bundles.sign(bundle, pair.private, version=5, now=NOW)
    counters = RollbackCounters({"another-model": 40, "demo-detector": 2})
    verdict = bundles.verify(bundle, keys.load_trust([pair.public]), counters=counters,
                             clock=TrustedClock(), device_now=NOW)
    assert verdict.accepted
    assert verdict.counters == RollbackCounters({"another-model": 40, "demo-detector": 5})
    assert RollbackCounters.from_json(verdict.counters.to_json()) == verdict.counters


def test_an_expired_document_is_refused(bundle: Path, pair: keys.KeyPair) -> None:
    bundles.sign(bundle, pair.private, version=5, now=NOW, expires_days=1)
    assert verify(bundle, pair.public, device_now=NOW + DAY - 1).accepted
    refusal = verify(bundle, pair.public, device_now=NOW + DAY).refusal
    assert refusal is not None and refusal.reason is Reason.EXPIRED


def test_expiry_uses_the_trusted_clock_not_a_clock_set_back(bundle: Path, pair: keys.KeyPair) -> None:
    """The device once saw time NOW + 3 days (persisted floor); its clock is now back in 1970."""
    bundles.sign(bundle, pair.private, version=5, now=NOW, expires_days=1)
    seen = TrustedClock(floor=NOW + 3 * DAY)
    refusal = verify(bundle, pair.public, device_now=0.0, clock=seen).refusal
    assert refusal is not None and refusal.reason is Reason.EXPIRED
    assert verify(bundle, pair.public, device_now=0.0).accepted  # with no history, 1970 < expiry


def test_time_learned_from_a_newer_document_expires_an_older_one(tmp_path: Path,
                                                                 pair: keys.KeyPair) -> None:
    old = make_bundle(tmp_path / "a")
    new = make_bundle(tmp_path / "b")
    bundles.sign(old, pair.private, version=1, now=NOW, expires_days=1)
    bundles.sign(new, pair.private, version=2, now=NOW + 10 * DAY, expires_days=30)
    # An RTC-less device at 1970: the newer document teaches it the time...
    verdict = verify(new, pair.public, device_now=0.0)
    assert verdict.accepted and verdict.clock.floor == int(NOW + 10 * DAY)
    # ...so the older, expired document is refused even though the device clock says 1970.
    refusal = verify(old, pair.public, device_now=0.0, clock=verdict.clock).refusal
    assert refusal is not None and refusal.reason is Reason.EXPIRED


def test_a_bundle_of_another_model_is_refused_when_one_is_expected(bundle: Path,
                                                                   pair: keys.KeyPair) -> None:
    bundles.sign(bundle, pair.private, version=5, now=NOW)
    assert verify(bundle, pair.public, model="demo-detector").accepted
    refusal = verify(bundle, pair.public, model="plate-reader").refusal
    assert refusal is not None and refusal.reason is Reason.WRONG_MODEL


def test_key_rotation(tmp_path: Path, bundle: Path) -> None:
    old = keys.generate(tmp_path / "old")
    new = keys.generate(tmp_path / "new")
    bundles.sign(bundle, old.private, version=1, now=NOW)
    assert verify(bundle, old.public).accepted
    assert verify(bundle, old.public, new.public).accepted  # the new key shipped beside the old
    old_signed = (bundle / "signature.json").read_bytes()
    bundles.sign(bundle, new.private, version=2, now=NOW)
    assert verify(bundle, old.public, new.public).accepted
    assert verify(bundle, new.public).accepted  # the old key removed
    (bundle / "signature.json").write_bytes(old_signed)
    refusal = verify(bundle, new.public).refusal
    assert refusal is not None and refusal.reason is Reason.UNKNOWN_KEY


def test_canonical_document_round_trips_and_other_spellings_are_refused() -> None:
    doc = BundleDocument("m", 3, "a" * 64, (FileEntry("manifest.json", 10, "a" * 64),
                                           FileEntry("x/y.bin", 0, "b" * 64)), 100, 200, "0" * 16)
    body = canonical_bytes(doc)
    assert parse_document(body) == doc
    spaced = json.dumps(json.loads(body), sort_keys=True).encode()
    with pytest.raises(DocumentError, match="canonical"):
        parse_document(spaced)
    for bad in ("../evil", "/abs", "a//b", "signature.json", "a\\b"):
        with pytest.raises(DocumentError):
            BundleDocument("m", 3, "a" * 64, (FileEntry("manifest.json", 1, "a" * 64),
                                              FileEntry(bad, 1, "b" * 64)), 1, 2, "0" * 16)
    with pytest.raises(DocumentError, match="version"):
        BundleDocument("m", 0, "a" * 64, doc.files, 1, 2, "0" * 16)
    with pytest.raises(DocumentError, match="expires_at"):
        BundleDocument("m", 1, "a" * 64, doc.files, 2, 2, "0" * 16)


def test_an_oversized_signature_file_is_refused_unparsed() -> None:
    verdict = check_document(b" " * (2 << 20), trust=TrustedKeys(), check_signature=lambda *a: True,
                             counters=RollbackCounters(), clock=TrustedClock(), device_now=NOW)
    assert verdict.refusal is not None and verdict.refusal.reason is Reason.MALFORMED


# -- chunked transfer ---------------------------------------------------------------------------

def test_chunked_transfer_resumes_and_verifies_each_chunk_and_the_whole(bundle: Path,
                                                                        pair: keys.KeyPair) -> None:
    _, doc = bundles.sign(bundle, pair.private, version=1, now=NOW)
    entry = doc.entry("model.tflite")
    assert entry is not None
    plan = bundles.plan_file(bundle, "model.tflite", chunk_size=64 * 1024)
    data = (bundle / "model.tflite").read_bytes()
    assert plan.count == 5 and plan.span(4) == (4 * 65536, 300_000 - 4 * 65536)
    assert plan.matches(entry)
    with pytest.raises(ChunkError, match="disk budget"):
        ReceiveState.start(plan, budget_bytes=299_999, entry=entry)
    state = ReceiveState.start(plan, budget_bytes=300_000, entry=entry)

    def chunk(i: int) -> bytes:
        off, n = plan.span(i)
        return data[off:off + n]

    outcome, state = state.accept(3, chunk(3))
    assert outcome is ChunkOutcome.ACCEPTED
    corrupt = bytearray(chunk(0))
    corrupt[7] ^= 1
    assert state.accept(0, bytes(corrupt))[0] is ChunkOutcome.BAD_HASH
    assert state.accept(0, chunk(0)[:-1])[0] is ChunkOutcome.BAD_SIZE
    assert state.accept(5, b"x")[0] is ChunkOutcome.OUT_OF_RANGE
    assert state.accept(3, chunk(3))[0] is ChunkOutcome.DUPLICATE
    outcome, state = state.accept(1, chunk(1))
    assert state.finish(hashlib.sha256(data).hexdigest()) is WholeOutcome.INCOMPLETE
    # restart: the persisted state asks only for what is missing
    state = ReceiveState.from_json(state.to_json())
    assert state.missing() == [0, 2, 4] and state.received_bytes == 2 * 65536
    for i in state.missing():
        outcome, state = state.accept(i, chunk(i))
        assert outcome is ChunkOutcome.ACCEPTED
    assert state.complete and state.received_bytes == 300_000
    assert state.finish(hashlib.sha256(data).hexdigest()) is WholeOutcome.VERIFIED
    assert state.finish(hashlib.sha256(data + b"!").hexdigest()) is WholeOutcome.BAD_HASH


def test_a_plan_that_is_not_for_the_signed_file_is_refused(bundle: Path, pair: keys.KeyPair) -> None:
    _, doc = bundles.sign(bundle, pair.private, version=1, now=NOW)
    entry = doc.entry("model.tflite")
    assert entry is not None
    bigger = plan_chunks("model.tflite", [b"x" * 1024] * 1000, 1024)  # "endless data"
    with pytest.raises(ChunkError, match="not for the signed file"):
        ReceiveState.start(bigger, budget_bytes=10**9, entry=entry)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=5000), chunk_size=st.integers(1, 700), seed=st.randoms(use_true_random=False))
def test_any_order_with_corruption_assembles_the_original(data: bytes, chunk_size: int, seed) -> None:
    pieces = [data[i:i + chunk_size] for i in range(0, len(data), chunk_size)]
    plan = plan_chunks("f", pieces, chunk_size)
    assert plan.size == len(data) and plan.sha256 == hashlib.sha256(data).hexdigest()
    state = ReceiveState.start(plan, budget_bytes=len(data))
    out = bytearray(len(data))
    order = list(range(len(pieces))) * 2
    seed.shuffle(order)
    for i in order:
        piece = pieces[i]
        if seed.random() < 0.3 and piece:
            bad = bytearray(piece)
            bad[seed.randrange(len(bad))] ^= 1 << seed.randrange(8)
            expect = ChunkOutcome.DUPLICATE if i in state.verified else ChunkOutcome.BAD_HASH
            assert state.accept(i, bytes(bad)) == (expect, state)
        outcome, state = state.accept(i, piece)
        if outcome is ChunkOutcome.ACCEPTED:
            off, n = plan.span(i)
            out[off:off + n] = piece
        state = ReceiveState.from_json(state.to_json())
    assert state.complete and bytes(out) == data
    assert state.finish(hashlib.sha256(bytes(out)).hexdigest()) is WholeOutcome.VERIFIED


def test_plan_round_trips_and_rejects_inconsistent_plans() -> None:
    plan = plan_chunks("f", [b"ab", b"c"], 2)
    assert ChunkPlan.from_json(json.loads(json.dumps(plan.to_json()))) == plan
    with pytest.raises(ChunkError, match="chunk hashes"):
        ChunkPlan("f", 5, 2, plan.chunk_sha256, plan.sha256)
    with pytest.raises(ChunkError, match="only the last"):
        plan_chunks("f", [b"a", b"bc"], 2)
    with pytest.raises(ChunkError, match="outside the plan"):
        ReceiveState.from_json(json.dumps({"plan": plan.to_json(), "verified": [2]}))


# -- the CLI ---------------------------------------------------------------------------------------

def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(agent_cmd(*map(str, args)), capture_output=True, text=True, cwd=ROOT,
                          timeout=120, stdin=subprocess.DEVNULL)


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    text = out.stdout + out.stderr
    assert out.returncode == 2 and "Traceback" not in text, (out.returncode, text)
    # argparse prints its usage first; the error itself is one line, as tests/test_no_traceback.py
    lines = [line for line in out.stderr.splitlines() if line.startswith("lepton-agent") and "error" in line]
    assert len(lines) == 1 and not out.stdout, text
    return lines[0]


def test_cli_keygen_sign_verify_and_each_refusal(tmp_path: Path, bundle: Path) -> None:
    out = cli("models", "keygen", "--out", tmp_path / "k")
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE((tmp_path / "k" / "signing.key").stat().st_mode) == 0o600
    key, pub = tmp_path / "k" / "signing.key", tmp_path / "k" / "signing.pub"
    out = cli("models", "sign", bundle, "--key", key, "--version", "3", "--expires", "7")
    assert out.returncode == 0 and "version 3" in out.stdout, out.stderr
    doc = json.loads(json.loads((bundle / "signature.json").read_text())["document"])
    assert doc["expires_at"] - doc["issued_at"] == 7 * DAY and abs(doc["issued_at"] - time.time()) < 60
    out = cli("models", "verify", bundle, "--trust", pub, "--installed-version", "2")
    assert out.returncode == 0 and out.stdout.startswith("valid: demo-detector version 3"), out.stderr
    assert "[rollback]" in one_line_error(cli("models", "verify", bundle, "--trust", pub,
                                              "--installed-version", "3"))
    other = keys.generate(tmp_path / "other")
    assert "[unknown_key]" in one_line_error(cli("models", "verify", bundle, "--trust", other.public))
    # rotation on the command line: both trusted
    assert cli("models", "verify", bundle, "--trust", other.public, "--trust", pub).returncode == 0
    flip_bit(bundle, tmp_path)
    line = one_line_error(cli("models", "verify", bundle, "--trust", pub))
    assert "[file_changed]" in line and "fix:" in line


def test_cli_refuses_an_expired_document(tmp_path: Path, bundle: Path, pair: keys.KeyPair) -> None:
    bundles.sign(bundle, pair.private, version=1, now=time.time() - 3 * DAY, expires_days=1)
    assert "[expired]" in one_line_error(cli("models", "verify", bundle, "--trust", pair.public))


@pytest.mark.parametrize("argv", [
    ["models", "keygen"],
    ["models", "keygen", "--out", "{existing}"],
    ["models", "keygen", "--out", "/proc/nope"],
    ["models", "sign", "{bundle}", "--key", "{tmp}/missing.key", "--version", "1"],
    ["models", "sign", "{bundle}", "--key", "{garbage}", "--version", "1"],
    ["models", "sign", "{bundle}", "--key", "{pub}", "--version", "1"],
    ["models", "sign", "{bundle}", "--key", "{key}", "--version", "0"],
    ["models", "sign", "{bundle}", "--key", "{key}", "--version", "two"],
    ["models", "sign", "{bundle}", "--key", "{key}", "--version", "1", "--expires", "-1"],
    ["models", "sign", "{bundle}", "--key", "{key}", "--version", "1", "--expires", "nan"],
    ["models", "sign", "{tmp}/nowhere", "--key", "{key}", "--version", "1"],
    ["models", "sign", "{tmp}", "--key", "{key}", "--version", "1"],
    ["models", "verify", "{bundle}"],
    ["models", "verify", "{bundle}", "--trust", "{pub}"],
    ["models", "verify", "{bundle}", "--trust", "{garbage}"],
    ["models", "verify", "{bundle}", "--trust", "{key}"],
    ["models", "verify", "{tmp}/nowhere", "--trust", "{pub}"],
    ["models", "verify", "{bundle}", "--trust", "{pub}", "--installed-version", "-1"],
], ids=lambda a: " ".join(a)[:70])
def test_cli_bad_input_is_one_line(tmp_path: Path, bundle: Path, pair: keys.KeyPair,
                                   argv: list[str]) -> None:
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(bytes(range(256)) * 4)
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "signing.key").write_text("do not overwrite me")
    args = [a.format(tmp=tmp_path, bundle=bundle, key=pair.private, pub=pair.public, garbage=garbage,
                     existing=tmp_path / "existing") for a in argv]
    line = one_line_error(cli(*args))
    assert "BEGIN PRIVATE KEY" not in line
    assert (tmp_path / "existing" / "signing.key").read_text() == "do not overwrite me"


def test_a_stale_temporary_signature_is_not_signed(bundle: Path, pair: keys.KeyPair) -> None:
    (bundle / ".signature.json.tmp").write_text("left by a sign killed mid-write")
    _, doc = bundles.sign(bundle, pair.private, version=1, now=NOW)
    assert [f.path for f in doc.files] == ["labels/labels.txt", "manifest.json", "model.tflite"]
    assert not (bundle / ".signature.json.tmp").exists() and verify(bundle, pair.public).accepted
