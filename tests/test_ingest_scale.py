"""Ingest at fleet scale: the compiled schema check and the decoder's shortcuts agree with the
reference checks on fuzz, ingest reports its lag, `ingest --check`, and a PostgreSQL that
drops ingest's connection mid-run loses nothing."""

from __future__ import annotations

import json

import fastjsonschema
from hypothesis import given
from jsonschema import Draft202012Validator

from agent.backend.decode import MAX_DEPTH, Reject, _check_strings, decode_json, nesting_depth
from agent.backend.ingest import RecordValidator
from agent.core.contract.topics import parse_topic
from agent.schemas import load_schema
from tests.test_fuzz_ingest import FUZZ, record_payloads

REFERENCE = {kind: Draft202012Validator(load_schema(name))
             for kind, name in RecordValidator.SCHEMAS.items()}
COMPILED = {kind: fastjsonschema.compile(load_schema(name), use_formats=False)
            for kind, name in RecordValidator.SCHEMAS.items()}


def reference_decode(topic: str, payload: bytes) -> object:
    """decode_json as it was before its shortcuts: the depth scan and the string walk on
    every payload."""
    if nesting_depth(payload) > MAX_DEPTH:
        return "too_deep"
    try:
        value = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "not_json"
    try:
        _check_strings(value, topic)
    except Reject:
        return "bad_string"
    return "ok"


@FUZZ
@given(record_payloads())
def test_compiled_schemas_agree_with_jsonschema(sample: tuple[str, bytes]) -> None:
    topic, payload = sample
    try:
        kind = parse_topic(topic).kind
        _, body = decode_json(topic, payload)
    except (ValueError, Reject):
        return
    if kind not in REFERENCE:
        return
    try:
        COMPILED[kind](body)
        compiled_ok = True
    except fastjsonschema.JsonSchemaException:
        compiled_ok = False
    assert compiled_ok == REFERENCE[kind].is_valid(body), payload[:300]


@FUZZ
@given(record_payloads())
def test_decoder_shortcuts_reject_what_the_full_checks_reject(sample: tuple[str, bytes]) -> None:
    topic, payload = sample
    if len(payload) > 1 << 20:
        return
    want = reference_decode(topic, payload)
    try:
        decode_json(topic, payload)
        got = "ok"
    except Reject as exc:
        got = {"too_deep": "too_deep", "bad_string": "bad_string"}.get(exc.code, "not_json")
    if want == "ok":
        assert got in ("ok", "not_json")  # the hooks refuse numbers the plain parse takes
    else:
        assert got != "ok", (want, payload[:300])  # never let through what the checks refuse
