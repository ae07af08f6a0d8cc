"""Signed model bundles on disk: keys, signing, verifying a bundle folder, chunking a file.

The thin I/O layer over :mod:`agent.core.ota` (which decides) and ``cryptography`` (Ed25519).
The OTA runtime and the ``lepton-agent models keygen|sign|verify`` commands call it; see
docs/ota.md."""
