"""What tests read of an open Outbox beyond its API, through agent/storage's own queries."""

from __future__ import annotations

from agent.storage.outbox import Outbox, query_backlog


def sent_not_acked(box: Outbox) -> int:
    """Records the broker took (PUBACK) that ingest has not acknowledged yet (the marks the
    outbox holds in memory written first)."""
    box.flush_marks()
    not_acked, _ = query_backlog(box.db, True)
    not_sent, _ = query_backlog(box.db, False)
    return not_acked - not_sent
