"""Local cache: the SQLite (WAL) outbox."""
