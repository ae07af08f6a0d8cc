"""`lepton-agent models keygen|sign|verify`: signed model bundles (docs/ota.md).

Registered under ``models`` by :mod:`agent.cli.models`; every refusal and every bad input is one
``lepton-agent: error: ...`` line and exit 2 (an AgentError), a valid bundle exits 0."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from agent.cli.common import positive


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days") from None
    if not 0 < value <= 36_500:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"{text} days is not in (0, 36500]")
    return value


def add_parsers(models_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``keygen``, ``sign`` and ``verify`` to the ``models`` subcommands."""
    keygen = models_sub.add_parser("keygen", help="make an Ed25519 signing key pair")
    keygen.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="folder for signing.key (mode 0600) and signing.pub")
    keygen.set_defaults(func=cmd_keygen)

    sign = models_sub.add_parser("sign", help="sign a model bundle folder (writes signature.json)")
    sign.add_argument("bundle", type=Path, metavar="BUNDLE_DIR")
    sign.add_argument("--key", type=Path, required=True, help="signing.key from keygen")
    sign.add_argument("--version", type=positive(int), required=True, metavar="N",
                      help="bundle version, higher than every version signed before for this model")
    sign.add_argument("--expires", type=_days, default=30.0, metavar="DAYS",
                      help="days until the signature expires (default 30)")
    sign.set_defaults(func=cmd_sign)

    verify = models_sub.add_parser("verify", help="verify a signed bundle as a device does")
    verify.add_argument("bundle", type=Path, metavar="BUNDLE_DIR")
    verify.add_argument("--trust", type=Path, action="append", required=True, metavar="PUB",
                        help="a trusted public key (repeat for a key rotation)")
    verify.add_argument("--installed-version", type=positive(int, zero=True), default=0, metavar="N",
                        help="the version installed for this model: N and lower are refused")
    verify.add_argument("--model", metavar="NAME", help="refuse a bundle of any other model")
    verify.set_defaults(func=cmd_verify)


def cmd_keygen(args: argparse.Namespace) -> int:
    from agent.ota.keys import generate

    pair = generate(args.out)
    print(f"key {pair.key_id}: private {pair.private} (0600, keep it secret), public {pair.public}")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    from agent.ota.bundles import sign

    path, doc = sign(args.bundle, args.key, version=args.version, now=time.time(),
                     expires_days=args.expires)
    print(f"signed {doc.model} version {doc.version} ({len(doc.files)} files, key {doc.key_id}, "
          f"expires {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(doc.expires_at))}): {path}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from agent.core.ota.clock import TrustedClock
    from agent.core.ota.verify import RollbackCounters
    from agent.ota.bundles import claimed_model, verify
    from agent.ota.keys import OtaError, load_trust

    trust = load_trust(args.trust)
    # The counter is per model name; the name is the signed document's (read unverified here
    # only to key the counter: verify() checks the signature before it uses the counter).
    model = claimed_model(args.bundle)
    counters = RollbackCounters({model: args.installed_version} if model else {})
    verdict = verify(args.bundle, trust, counters=counters, clock=TrustedClock(),
                     device_now=time.time(), expected_model=args.model)
    doc = verdict.document
    if verdict.refusal is not None or doc is None:
        r = verdict.refusal
        raise OtaError(f"refused [{r.reason.value}]: {r.message}" if r else "refused", path=args.bundle,
                       fix=r.fix if r else None)
    print(f"valid: {doc.model} version {doc.version}, {len(doc.files)} files, key {doc.key_id}, "
          f"expires {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(doc.expires_at))}")
    return 0
