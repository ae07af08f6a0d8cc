"""Tallies of the stored counts (``lepton-agent counts``): the ``counts`` rows ingest keeps,
summed per device, stream, rule, kind, label and direction over buckets of ``by`` seconds.

The stored buckets are aligned to wall-clock time (their start is a multiple of their length
since the epoch), so when ``by`` is a multiple of every stored length, each stored bucket lies
in exactly one ``by`` bucket and ``start_s / by * by`` (integer division, the same SQL on
SQLite and PostgreSQL) is the ``by`` bucket it belongs to. A ``by`` that is not such a multiple
would split stored buckets, so it is refused.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.backend.store import _redact, _split_schema, sqlite_path
from agent.errors import ConfigError, StorageError

_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_BY_S = 366 * 86400


def parse_by(text: str) -> int:
    """``15m``, ``1h``, ``900s``, ``1d`` or bare seconds, as whole seconds (at most a year)."""
    found = _DURATION.match(text.strip())
    seconds = int(found.group(1)) * _UNIT_S[found.group(2)] if found else 0
    if not found or not 1 <= seconds <= MAX_BY_S:
        raise ConfigError(f"{text!r} is not a bucket length", key="--by",
                          fix="give a whole number of s, m, h or d, e.g. 15m, 1h, 1d "
                              "(at most 366d)")
    return seconds


def parse_since(text: str, now: datetime | None = None) -> int:
    """Epoch seconds of ``--since``: an RFC 3339 time (``2026-11-22T13:00:00Z``, an offset, or
    none for UTC), a date (``2026-11-22``, midnight UTC), or an age (``90m``, ``2h``, ``7d``:
    that long before ``now``)."""
    value = text.strip()
    now = now or datetime.now(timezone.utc)
    age = _DURATION.match(value)
    if age and age.group(2):
        return int((now - timedelta(seconds=int(age.group(1)) * _UNIT_S[age.group(2)]))
                   .timestamp())
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        when = None
    if when is None or not 1970 <= when.year <= 9999:
        raise ConfigError(f"{text!r} is not a time", key="--since",
                          fix="give an RFC 3339 time (2026-11-22T13:00:00Z), a date "
                              "(2026-11-22) or an age (90m, 2h, 7d)")
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp())


@dataclass(frozen=True)
class CountFilter:
    """Which counts to tally; None matches everything. ``rule`` names a line or a zone;
    ``since_s`` keeps the ``by`` buckets from the one holding that time on."""

    site: str | None = None
    device: str | None = None
    source: str | None = None
    rule: str | None = None
    since_s: int | None = None


@dataclass(frozen=True)
class Tally:
    """One sum: the count of ``label`` in ``direction`` over ``rule`` in one series."""

    rule: str
    kind: str
    label: str
    direction: str
    count: int


@dataclass(frozen=True)
class Series:
    """One device's pipeline (``source``) in one ``by`` bucket: how many stored buckets made
    it (``records``), whether any was partial, and its tallies (empty: measured, none counted)."""

    site: str
    device: str
    source: str
    records: int
    partial: bool
    tallies: tuple[Tally, ...]


@dataclass(frozen=True)
class OutBucket:
    start_s: int
    seconds: int
    series: tuple[Series, ...]

    @property
    def partial(self) -> bool:
        return any(s.partial for s in self.series)


@dataclass(frozen=True)
class CountReport:
    by_s: int
    filter: CountFilter
    buckets: tuple[OutBucket, ...]

    def totals(self) -> list[tuple[tuple[str, str, str, str, str, str, str], int]]:
        """Sums over all buckets per (site, device, source, rule, kind, label, direction)."""
        out: dict[tuple[str, str, str, str, str, str, str], int] = {}
        for b in self.buckets:
            for s in b.series:
                for t in s.tallies:
                    key = (s.site, s.device, s.source, t.rule, t.kind, t.label, t.direction)
                    out[key] = out.get(key, 0) + t.count
        return sorted(out.items())

    def to_json(self) -> dict[str, Any]:
        f = self.filter
        return {
            "by_s": self.by_s,
            "filter": {"site": f.site, "device": f.device, "stream": f.source, "line": f.rule,
                       "since": None if f.since_s is None else iso(f.since_s)},
            "buckets": [{
                "start": iso(b.start_s), "seconds": b.seconds, "partial": b.partial,
                "series": [{
                    "site": s.site, "device": s.device, "stream": s.source,
                    "records": s.records, "partial": s.partial,
                    "counts": [{"rule": t.rule, "kind": t.kind, "label": t.label,
                                "direction": t.direction, "count": t.count}
                               for t in s.tallies]} for s in b.series]}
                for b in self.buckets],
            "totals": [{"site": k[0], "device": k[1], "stream": k[2], "rule": k[3],
                        "kind": k[4], "label": k[5], "direction": k[6], "count": n}
                       for k, n in self.totals()],
        }


def iso(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Reader:
    """Read-only SQL on SQLite or PostgreSQL, with ``?`` placeholders."""

    def __init__(self, url: str) -> None:
        scheme = urlsplit(url).scheme
        self.url = _redact(url)
        self._pg: Any = None
        self._sqlite: sqlite3.Connection | None = None
        if scheme in ("postgresql", "postgres"):
            try:
                import psycopg
            except ImportError as exc:
                raise StorageError("PostgreSQL needs psycopg", path=self.url,
                                   fix="pip install 'lepton-edge[backend]'") from exc
            conninfo, schema = _split_schema(url)
            try:
                self._pg = psycopg.connect(conninfo, autocommit=True, connect_timeout=10)
                if schema:
                    self._pg.execute(f'SET search_path TO "{schema}"')
            except psycopg.Error as exc:
                raise StorageError(f"cannot open PostgreSQL: {' '.join(str(exc).split())}",
                                   path=self.url, fix="check the server is up and the URL") \
                    from exc
            self._errors: tuple[type[BaseException], ...] = (psycopg.Error,)
        else:
            path = sqlite_path(url)
            if not path.is_file():
                raise StorageError("no such database file", path=url,
                                   fix="give the --db that ingest writes (sqlite:////ABS/PATH)")
            try:
                self._sqlite = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro",
                                               uri=True)
            except sqlite3.Error as exc:
                raise StorageError(f"cannot open: {exc}", path=url,
                                   fix="check the file is ingest's SQLite database") from exc
            self._errors = (sqlite3.Error,)
        tables = self.rows("SELECT 1 FROM count_buckets WHERE 1 = 0", (), check=False)
        if tables is None:
            self.close()
            raise StorageError("no count_buckets table: not an ingest database, or one written "
                               "by an ingest older than counts", path=self.url,
                               fix="give the --db ingest writes to; counts appear once an "
                                   "ingest of this version has stored some")

    def rows(self, sql: str, args: Sequence[Any], check: bool = True) -> Any:
        try:
            if self._sqlite is not None:
                return self._sqlite.execute(sql, tuple(args)).fetchall()
            return self._pg.execute(sql.replace("?", "%s"), tuple(args)).fetchall()
        except self._errors as exc:
            if not check:
                return None
            raise StorageError(f"query failed: {' '.join(str(exc).split())}", path=self.url,
                               fix="check the database is ingest's") from exc

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        if self._pg is not None:
            self._pg.close()


def _where(f: CountFilter, by_s: int, rule: bool) -> tuple[str, list[Any]]:
    clauses, args = [], []
    for column, value in (("site", f.site), ("device", f.device), ("source", f.source),
                          *((("rule", f.rule),) if rule else ())):
        if value is not None:
            clauses.append(f"{column} = ?")
            args.append(value)
    if f.since_s is not None:
        clauses.append("start_s >= ?")
        args.append(f.since_s // by_s * by_s)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


def tally(url: str, f: CountFilter, by_s: int) -> CountReport:
    """The tallies of the counts in the database at ``url`` that ``f`` selects, re-bucketed to
    ``by_s`` seconds; ConfigError when ``by_s`` is not a multiple of a stored bucket length."""
    reader = _Reader(url)
    try:
        where, args = _where(f, by_s, rule=False)
        lengths = sorted(int(r[0]) for r in reader.rows(
            f"SELECT DISTINCT seconds FROM count_buckets{where}", args))
        bad = [s for s in lengths if by_s % s]
        if bad:
            raise ConfigError(
                f"{by_s} s is not a multiple of the stored bucket length "
                f"{', '.join(f'{s} s' for s in bad)}: it would split stored buckets",
                key="--by", fix=f"give a multiple of {_lcm(lengths)} s (e.g. "
                                f"{_lcm(lengths) * max(1, 900 // _lcm(lengths))}s)")
        bucket = f"(start_s / {by_s}) * {by_s}"  # by_s is an int we parsed: no injection
        series = reader.rows(
            f"SELECT {bucket} AS b, site, device, source, COUNT(*), MAX(partial) "
            f"FROM count_buckets{where} GROUP BY b, site, device, source", args)
        where_r, args_r = _where(f, by_s, rule=True)
        sums = reader.rows(
            f"SELECT {bucket} AS b, site, device, source, rule, kind, label, direction, "
            f"SUM(count) FROM counts{where_r} "
            "GROUP BY b, site, device, source, rule, kind, label, direction", args_r)
    finally:
        reader.close()
    tallies: dict[tuple[int, str, str, str], list[Tally]] = {}
    for b, site, device, source, rule, kind, label, direction, n in sums:
        tallies.setdefault((int(b), site, device, source), []).append(
            Tally(rule, kind, label, direction, int(n)))
    # With a rule named, a series that never counted on it is left out: it may not have it.
    having = {k[1:] for k in tallies}
    per_bucket: dict[int, list[Series]] = {}
    for b, site, device, source, records, partial in series:
        key = (int(b), site, device, source)
        if f.rule is not None and key[1:] not in having:
            continue
        per_bucket.setdefault(int(b), []).append(Series(
            site, device, source, int(records), bool(partial),
            tuple(sorted(tallies.get(key, []), key=lambda t: (t.rule, t.kind, t.label,
                                                               t.direction)))))
    buckets = tuple(OutBucket(b, by_s, tuple(sorted(s, key=lambda x: (x.site, x.device,
                                                                        x.source))))
                    for b, s in sorted(per_bucket.items()))
    return CountReport(by_s, f, buckets)


def _lcm(values: list[int]) -> int:
    from math import lcm

    return lcm(*values) if values else 1


def render(report: CountReport) -> str:
    """The report as text: one line per tally, bucket by bucket, then the totals."""
    if not report.buckets:
        return "no counts stored for this selection\n"
    head = ("bucket (UTC)", "site", "device", "stream", "rule", "kind", "label", "dir", "count")
    rows: list[tuple[str, ...]] = []
    for b in report.buckets:
        for s in b.series:
            flag = " (partial)" if s.partial else ""
            start = iso(b.start_s) + flag
            if not s.tallies:
                rows.append((start, s.site, s.device, s.source, "-", "-", "-", "-", "0"))
            for t in s.tallies:
                rows.append((start, s.site, s.device, s.source, t.rule, t.kind, t.label,
                             t.direction, str(t.count)))
    for k, n in report.totals():
        rows.append(("total", *k, str(n)))
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [head, *rows]]
    partial = sum(1 for b in report.buckets if b.partial)
    n = len(report.buckets)
    note = (f"{n} bucket{'s' if n != 1 else ''} of {report.by_s} s"
            + (f", {partial} with partial intervals (the agent did not see all of them)"
               if partial else ""))
    return "\n".join([*lines, note]) + "\n"
