"""The device's local cache: the SQLite (WAL) outbox, its blobs, its read-only report and the
state directory's lock. Only this package speaks SQL to ``outbox.db``."""
