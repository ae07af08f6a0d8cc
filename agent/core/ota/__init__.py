"""Signed model bundles for over-the-air updates, as pure logic (issue 18 items 3 and 5).

- :mod:`~agent.core.ota.document`: the canonical signed document and its envelope;
- :mod:`~agent.core.ota.verify`: the device's decisions (trusted keys, anti-rollback, expiry,
  mix-and-match), each refusal a typed :class:`~agent.core.ota.verify.Reason`;
- :mod:`~agent.core.ota.clock`: trusted time that never goes backwards;
- :mod:`~agent.core.ota.chunks`: the chunked, resumable, budget-bounded transfer.

File access and the Ed25519 calls live in :mod:`agent.ota`. See docs/ota.md.
"""
