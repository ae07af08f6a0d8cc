"""The typed (msgspec) decoding of results: its Structs mirror result.v1, and ingest's verdict
with it is the reference's (decode_json + jsonschema) on fuzz: the same record, or the same
reject code and reason text."""

from __future__ import annotations

import json
import typing
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.backend.decode import Reject
from agent.backend.ingest import RecordValidator
from agent.backend.typed import TASK_OUTPUT, ResultV1, decode_result
from agent.bench.ingest import make_messages
from agent.schemas import load_schema
from tests.ingest_support import RESULTS, SITE, result_body
from tests.test_fuzz_ingest import FUZZ, json_values, record_payloads

VALIDATOR = RecordValidator()


def verdict(topic: str, payload: bytes, typed: bool) -> object:
    """The record ingest stores, or (code, reason) of its reject."""
    try:
        return VALIDATOR.validate(topic, payload, typed=typed)
    except Reject as exc:
        return (exc.code, exc.reason)


# -- the Structs against the schema ------------------------------------------------------------

def _struct_of(annotation: Any) -> type[msgspec.Struct] | None:
    """The Struct type inside an annotation (Annotated, list[...], dict[str, ...], X | UNSET)."""
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return annotation
    for arg in typing.get_args(annotation):
        found = _struct_of(arg)
        if found is not None:
            return found
    return None


def _objects(schema: dict[str, Any], struct: type[msgspec.Struct], where: str = "$"
             ) -> list[tuple[str, dict[str, Any], type[msgspec.Struct]]]:
    """(path, object schema, Struct) for every object of the schema a Struct mirrors."""
    out = [(where, schema, struct)]
    hints = typing.get_type_hints(struct, include_extras=True)
    for name, sub in schema.get("properties", {}).items():
        inner = _struct_of(hints.get(name))
        if inner is None:
            continue
        sub = sub.get("items", sub)
        if "additionalProperties" in sub and isinstance(sub["additionalProperties"], dict):
            sub = sub["additionalProperties"]
        out += _objects(sub, inner, f"{where}.{name}")
    return out


def test_structs_mirror_the_schema() -> None:
    """Every object the Structs model has the schema's fields, required ones required, and is
    closed (unknown fields refused) wherever the schema is; where the schema is open, the
    Struct is closed too (stricter: such a payload goes to the reference checks)."""
    pairs = _objects(load_schema("result.v1"), ResultV1)
    assert len(pairs) >= 10
    for where, schema, struct in pairs:
        info = msgspec.inspect.type_info(struct)
        assert isinstance(info, msgspec.inspect.StructType)
        fields = {f.name for f in info.fields}
        required = {f.name for f in info.fields if f.required}
        assert fields == set(schema["properties"]), where
        assert required == set(schema.get("required", [])), where
        assert info.forbid_unknown_fields, where


def test_task_outputs_are_the_schemas() -> None:
    """The schema's allOf: task T requires its output and forbids the others'."""
    rules = {}
    for rule in load_schema("result.v1")["allOf"]:
        task = rule["if"]["properties"]["task"]["const"]
        (required,) = rule["then"]["required"]
        forbidden = {r["required"][0] for r in rule["then"]["not"]["anyOf"]}
        assert forbidden == set(TASK_OUTPUT.values()) - {required}
        rules[task] = required
    assert rules == TASK_OUTPUT


# -- the verdict against the reference ---------------------------------------------------------

UNIT = st.floats(0, 1)
BOX = st.lists(UNIT, min_size=4, max_size=4)


@st.composite
def valid_results(draw: st.DrawFn) -> dict[str, Any]:
    """Results valid by the schema, with its optional parts and values at their bounds."""
    body = result_body(draw(st.sampled_from([1, 7, 2**31, 2**53 + 1, 2**63 - 1])))
    body["mono_ns"] = draw(st.sampled_from([0, 5, 2**63 - 1]))
    body["latency_ms"] = draw(st.dictionaries(
        st.sampled_from(["capture", "invoke", "queue", "x"]),
        st.one_of(st.floats(0, 1e6), st.integers(0, 10**6), st.just(-1.0)), max_size=3))
    del body["detections"]
    if draw(st.booleans()):
        body["detections"] = draw(st.lists(st.fixed_dictionaries(
            {"label": st.text(max_size=6), "class_id": st.integers(0, 2**31 - 1),
             "score": UNIT, "box": BOX}), max_size=3))
    if draw(st.booleans()):
        body["classes"] = draw(st.lists(st.fixed_dictionaries(
            {"label": st.sampled_from(["a", 'q":x', "é"]), "class_id": st.integers(0, 9),
             "score": UNIT}), max_size=2))
    if draw(st.booleans()):
        body["sensors"] = draw(st.dictionaries(st.sampled_from(["vib0", "t:1"]), st.fixed_dictionaries(
            {"ts": st.just("2026-11-22T12:00:00Z"),
             "values": st.dictionaries(st.text(max_size=3),
                                       st.one_of(st.floats(-1e9, 1e9), st.integers(-5, 5)),
                                       max_size=2)},
            optional={"age_s": st.floats(0, 10), "extra": st.integers()}), max_size=2))
    if draw(st.booleans()):
        body["poses"] = [{"score": 0.5, "keypoints": [{"name": "n", "x": 0, "y": 1,
                                                      "score": 0.2}], "box": [0, 0, 1, 1]}]
    if draw(st.booleans()):
        body["embedding"] = {"dim": 2, "values": draw(st.lists(
            st.one_of(st.floats(-1e20, 1e20), st.integers(-2**63, 2**63 - 1)), max_size=3)),
            "normalized": True}
    outputs = [f for f in TASK_OUTPUT.values() if f in body]
    if outputs and draw(st.integers(0, 9)):  # mostly one output and its task, as devices do
        keep = draw(st.sampled_from(outputs))
        for f in outputs:
            if f != keep:
                del body[f]
        body["task"] = next(t for t, f in TASK_OUTPUT.items() if f == keep)
    if draw(st.booleans()):
        body["snapshot"] = draw(st.sampled_from(["0" * 64, "ab" * 32, "AB" * 32]))
    return body


@st.composite
def result_payloads(draw: st.DrawFn) -> bytes:
    """A result as devices write it, or nearly: valid ones in several layouts, one field
    changed to anything, a key repeated, or one of the ingest fuzz payloads."""
    how = draw(st.sampled_from(["valid", "spaced", "changed", "dup", "fuzz"]))
    if how == "fuzz":
        topic, payload = draw(record_payloads())
        return payload if topic == RESULTS else json.dumps(result_body(1)).encode()
    body = draw(valid_results())
    if how == "changed":
        body[draw(st.sampled_from([*sorted(body), "extra"]))] = draw(json_values)
    if how == "dup":
        key = draw(st.sampled_from(sorted(body)))
        text = json.dumps(body)
        return (text[:1] + json.dumps(key) + ": " + json.dumps(draw(json_values)) + ", "
                + text[1:]).encode()
    if how == "spaced":
        return json.dumps(body, indent=draw(st.sampled_from([None, 1])),
                          separators=(draw(st.sampled_from([",", " , "])),
                                      draw(st.sampled_from([":", " : ", "\t:"]))),
                          ensure_ascii=False).encode()
    return json.dumps(body, ensure_ascii=draw(st.booleans())).encode()


@FUZZ
@given(result_payloads())
def test_typed_decoding_gives_the_reference_verdict(payload: bytes) -> None:
    assert verdict(RESULTS, payload, True) == verdict(RESULTS, payload, False), payload[:400]


@FUZZ
@given(valid_results())
def test_records_as_devices_write_them_take_the_typed_path(body: dict[str, Any]) -> None:
    """What a device writes (json.dumps, no escapes) and the reference accepts is accepted by
    the typed decoder alone, unless it is outside what the Structs model."""
    payload = json.dumps(body, ensure_ascii=False).encode()
    outside = (any(v < 0 for v in body["latency_ms"].values())
               or any("extra" in s for s in body.get("sensors", {}).values())
               or any(abs(v) > 9.2e18 for v in body.get("embedding", {}).get("values", []))
               or payload.count(b"[") + payload.count(b"{") > 32 or b"\\u" in payload)
    valid = not isinstance(verdict(RESULTS, payload, False), tuple)
    assert (decode_result(payload) is not None) == (valid and not outside), payload[:400]


@pytest.mark.parametrize("payload", [
    # a key repeated: msgspec keeps the last, the reference refuses
    b'{"seq": 1, ' + json.dumps(result_body(2)).encode()[1:],
    json.dumps(result_body(2)).encode()[:-1] + b', "latency_ms": {"a": 1, "a": 2}}',
    # beyond 64 bits in a number field, which msgspec would take as a float
    json.dumps({**result_body(2), "latency_ms": {"capture": 2**64}}).encode(),
    json.dumps({**result_body(2), "embedding": {"dim": 1, "values": [-(2**63) - 1]}}).encode(),
    # NUL, a lone surrogate
    json.dumps({**result_body(2), "model": {"name": "\x00", "version": "",
                                            "sha256": "0" * 64}}).encode(),
    json.dumps({**result_body(2), "model": {"name": "\ud800", "version": "",
                                            "sha256": "0" * 64}}).encode(),
    # more brackets than the depth limit (valid: the reference decides)
    json.dumps({**result_body(2), "detections": [result_body(1)["detections"][0]] * 20}).encode(),
    b"\xef\xbb\xbf" + json.dumps(result_body(2)).encode(),
])
def test_what_msgspec_alone_would_take(payload: bytes) -> None:
    """Each of these is refused by the reference or needs its judgement: the typed path
    passes it on, and the verdict is the reference's."""
    assert verdict(RESULTS, payload, True) == verdict(RESULTS, payload, False)


def test_simulator_records_all_take_the_typed_path() -> None:
    messages = make_messages(200)
    assert all(decode_result(p) is not None for _, p in messages)
    body = result_body(3)
    topic = f"lepton/v1/{SITE}/other/results/cam0"
    assert verdict(topic, json.dumps(body).encode(), True) == verdict(
        topic, json.dumps(body).encode(), False)
    assert verdict(topic, json.dumps(body).encode(), True)[0] == "topic_mismatch"  # type: ignore[index]
