"""A publish the broker refuses as "Not authorized" says what to check (the device id against
the name its ACL identity carries), and the records stay in the outbox."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.core.outbox import PublishWindow
from agent.storage.outbox import Outbox
from agent.sync.uplink import Uplink


@pytest.mark.parametrize(("reason", "hinted"), [("Not authorized", True),
                                                ("Quota exceeded", False)])
def test_a_refused_publish_names_what_to_check(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                               reason: str, hinted: bool) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    uplink = Uplink(outbox, PublishWindow(10))
    with caplog.at_level(logging.ERROR, logger="agent"):
        uplink.on_puback([], [(7, reason)])
    line = " ".join(r.getMessage() for r in caplog.records)
    assert reason in line and "stay in the outbox" in line
    assert ("device_id equals the name in its certificate" in line) is hinted
    outbox.close()
