"""Bounded decoding of what devices send: size, nesting depth, numbers and strings are checked
before or while JSON is parsed, so no message can exhaust the stack, overflow a database
column or carry text a database refuses. Each refusal is a :class:`Reject` with a short code
that ingest counts."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from datetime import datetime
from typing import Any

import numpy as np

from agent.errors import RecordRejected

MAX_PAYLOAD = 1 << 20
"""Largest record payload (bytes); a shard chunk has its own limit (``shards.MAX_CHUNK``)."""
MAX_DEPTH = 32
"""Deepest nesting of arrays and objects; the contract's records nest at most 4 deep."""
INT_MIN, INT_MAX = -(1 << 63), (1 << 64) - 1
"""Integers anywhere in a payload must fit 64 bits: what every consumer can read."""
REASON_MAX = 500
PAYLOAD_KEPT = 65536
"""At most this many bytes of a rejected payload are kept in ``rejects``."""

# Codes of the reasons a message is rejected (the keys of IngestStats.rejects).
TOO_LARGE, TOO_DEEP, NOT_UTF8, NOT_JSON = "too_large", "too_deep", "not_utf8", "not_json"
DUPLICATE_KEY, NUMBER_RANGE, BAD_STRING = "duplicate_key", "number_range", "bad_string"
BAD_TOPIC, SCHEMA, TOPIC_MISMATCH, BAD_TS = "bad_topic", "schema", "topic_mismatch", "bad_ts"
SHARD, UNSTORABLE, INTERNAL = "shard", "unstorable", "internal"
BAD_COUNT = "bad_count"
"""A count record valid by its schema but not by the contract: a bucket start not aligned to
its length, an entry key given twice, a stream that is not '{source}.counts'."""


class Reject(RecordRejected):
    """A message ingest refuses, with the code of the reason (counted per code)."""

    def __init__(self, message: str, *, topic: str, code: str) -> None:
        super().__init__(message, topic=topic)
        self.code = code


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def nesting_depth(payload: bytes) -> int:
    """The deepest bracket nesting of a JSON text, strings skipped (without parsing it)."""
    brackets = _STRING.sub(b"", payload).translate(None, _NOT_BRACKET)
    if not brackets:
        return 0
    # +1 for an opening bracket, -1 for a closing one; the running sum's peak is the depth.
    steps = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((steps == ord("[")) | (steps == ord("{")), 1, -1)
    return int(np.cumsum(steps, dtype=np.int64).max())


class _Parse:
    """json.loads hooks that refuse what a store or a consumer could not keep."""

    def __init__(self, topic: str) -> None:
        self.topic = topic

    def constant(self, name: str) -> Any:
        raise Reject(f"{name} is not a JSON number", topic=self.topic, code=NUMBER_RANGE)

    def integer(self, text: str) -> int:
        if len(text) > 21:  # longer than any 64-bit integer; int() of huge text is slow
            raise Reject(f"integer {text[:24]}... does not fit 64 bits", topic=self.topic,
                         code=NUMBER_RANGE)
        value = int(text)
        if not INT_MIN <= value <= INT_MAX:
            raise Reject(f"integer {text} does not fit 64 bits", topic=self.topic,
                         code=NUMBER_RANGE)
        return value

    def floating(self, text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise Reject(f"number {text[:40]} is beyond double precision", topic=self.topic,
                         code=NUMBER_RANGE)
        return value

    def pairs(self, items: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(items)
        if len(out) != len(items):
            dup = next(k for k, n in Counter(k for k, _ in items).items() if n > 1)
            raise Reject(f"duplicate key {clean(dup, 64)!r} in an object", topic=self.topic,
                         code=DUPLICATE_KEY)
        return out


def _check_strings(value: Any, topic: str) -> None:
    """No NUL and no lone surrogate (from a \\u escape) anywhere: databases refuse both."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                raise Reject("a string holds NUL (\\u0000)", topic=topic, code=BAD_STRING)
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise Reject("a string holds a lone surrogate (\\ud800-\\udfff)", topic=topic,
                             code=BAD_STRING) from None


_OUT_OF_FAST_RANGE = re.compile(rb"\d{19}|[eE][+-]?\d{3}")
"""Digits that may make a number the hooks refuse: an integer of 19 digits or more (beyond
64 bits possible), an exponent of 3 digits (beyond double precision possible)."""


def decode_json(topic: str, payload: bytes, limit: int = MAX_PAYLOAD,
                shortcuts: bool = True) -> tuple[str, Any]:
    """The payload's text and parsed value, or a :class:`Reject` naming why not.

    ``shortcuts=False`` runs every check on every payload (the reference the tests compare
    the shortcuts with)."""
    if len(payload) > limit:
        raise Reject(f"payload of {len(payload)} bytes exceeds {limit}", topic=topic,
                     code=TOO_LARGE)
    # Fewer opening brackets than the limit cannot nest deeper than it: most records skip
    # the scan (1/7 of the decode cost on simulator records).
    depth = (0 if shortcuts and payload.count(b"[") + payload.count(b"{") <= MAX_DEPTH
             else nesting_depth(payload))
    if depth > MAX_DEPTH:
        raise Reject(f"JSON nested {depth} deep (at most {MAX_DEPTH})", topic=topic,
                     code=TOO_DEEP)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Reject(f"payload is not UTF-8: {exc}", topic=topic, code=NOT_UTF8) from None
    hooks = _Parse(topic)
    try:
        if shortcuts and _OUT_OF_FAST_RANGE.search(payload) is None:
            # No number here can leave 64 bits or double precision: the C parser reads them
            # (a Python hook per number was ~15 us of a result record's ~60 us decode).
            value = json.loads(text, parse_constant=hooks.constant,
                               object_pairs_hook=hooks.pairs)
        else:
            value = json.loads(text, parse_constant=hooks.constant, parse_int=hooks.integer,
                               parse_float=hooks.floating, object_pairs_hook=hooks.pairs)
    except (json.JSONDecodeError, ValueError, RecursionError) as exc:
        # ValueError: a float of digits Python refuses; RecursionError cannot happen under
        # MAX_DEPTH but stays a reject rather than a crash.
        raise Reject(f"payload is not JSON: {clean(str(exc), 200)}", topic=topic,
                     code=NOT_JSON) from None
    # NUL and lone surrogates can only come from a \u escape (json.loads refuses raw control
    # characters and the text is valid UTF-8): without one there is nothing to look for.
    if not shortcuts or "\\u" in text:
        _check_strings(value, topic)
    return text, value


_TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def check_timestamp(value: Any, topic: str, key: str = "ts") -> str:
    """An RFC 3339 time with a real date and time of day in years 1-9999 (what both stores
    accept as a timestamp)."""
    if not isinstance(value, str) or not _TS.match(value):
        raise Reject(f"{key} {clean(repr(value), 80)} is not an RFC 3339 UTC time",
                     topic=topic, code=BAD_TS)
    try:
        # What datetime.strptime("%Y-%m-%dT%H:%M:%S") took (a real date, hour 0-23, minute
        # and second 0-59), at a tenth of its cost.
        datetime(int(value[0:4]), int(value[5:7]), int(value[8:10]), int(value[11:13]),
                 int(value[14:16]), int(value[17:19]))
    except ValueError:
        raise Reject(f"{key} {value[:80]!r} is not a real date and time", topic=topic,
                     code=BAD_TS) from None
    return value


def clean(text: str, limit: int = REASON_MAX) -> str:
    """Text safe for any database column: no NUL, no lone surrogate, at most ``limit`` chars."""
    text = text.replace("\x00", "\\0").encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[:limit - 3] + "..."
