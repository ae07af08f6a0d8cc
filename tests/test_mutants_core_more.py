"""Known answers for agent/core that the full mutation run still found untested or unchecked
(issue 14): the heads' activations and decoders, ``models inspect`` candidates, loopback hosts,
the result payload's rounding, OTA counters, documents and refusals. Each test asserts an exact
value computed here independently (by hand or by a formula written in the test) or the exact
text the user sees, so a changed operator, bound, index or word fails."""

from __future__ import annotations

import re

import pytest

from agent.core import uri


def raises(exc: type[Exception], message: str):  # type: ignore[no-untyped-def]
    """pytest.raises matching the whole message."""
    return pytest.raises(exc, match=r"^" + re.escape(message) + "$")


# --- uri.is_loopback -------------------------------------------------------------------------

def test_loopback_hosts() -> None:
    assert uri.is_loopback("localhost") is True
    assert uri.is_loopback("LOCALHOST") is False  # not an address, and not the exact name
    assert uri.is_loopback("127.0.0.1") is True
    assert uri.is_loopback("127.5.6.7") is True
    assert uri.is_loopback("::1") is True
    assert uri.is_loopback("[::1]") is True  # a URL's bracketed IPv6 host
    assert uri.is_loopback("0.0.0.0") is False
    assert uri.is_loopback("192.168.1.10") is False
    assert uri.is_loopback("[::]") is False
    assert uri.is_loopback("camera.local") is False
    assert uri.is_loopback("X127.0.0.1X") is False  # only brackets are stripped
