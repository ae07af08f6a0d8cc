"""Fuzz (hypothesis): random configs built from the schema's keys, types and ranges, and random
command lines built from every subparser's options. A config either loads or is refused with one
ConfigError line; a command line either parses (and, where cheap, runs) or is an argparse usage
error; nothing ends in an exception the CLI did not expect (exit 1, ``internal error``).

Default tier: about 1,700 in-process cases and a few real processes; ``-m slow`` runs many
more of each."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ByteSize

from agent.config import load_config
from agent.config.schema import AgentConfig
from agent.errors import ConfigError
from tests.conftest import DEFAULT_MODEL, ROOT, agent_cmd


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
WORK = Path(tempfile.mkdtemp(prefix="lepton-fuzz-"))

# -- configs ----------------------------------------------------------------------------------------

anything = st.one_of(
    st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=12),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text("abc_", min_size=1, max_size=4), st.integers(-3, 3), max_size=2))

EXAMPLES = {  # valid strings (and near misses) for keys with a syntax of their own
    "uri": ["synthetic://64x48@10", "synthetic://0x0@1", "v4l2:///dev/video9", "rtsp://cam/x",
            "gst:videotestsrc ! appsink", "ftp://x", "clip.mp4", "",
            "serial:///dev/ttyUSB0?protocol=csv&name=s", "serial://", "serial:///dev/x?baud=abc"],
    "broker": ["mqtt://127.0.0.1:1883", "mqtts://h:8883", "mqtt://u:pw@h", "tcp://h",
               "mqtt://[::1", "mqtt://h:99999", ""],
    "device_id": ["cam-1", "a/b", "#", "", "x" * 300],
    "site": ["s1", "+", "a b"],
    "stream": ["cam0", "a/b", ""],
    "prometheus_host": ["127.0.0.1", "0.0.0.0", "::1", "not a host"],
    "board": ["rpi4", "x86-dev", "amiga", "../../etc/passwd", "rpi4\x00", ""],
    "client_id": ["c1", ""], "username": ["u", ""],
}
PATHS = ["state", "sub/dir", ".", "", "/proc/nope/x", "/dev/null", "nul\x00byte", "é/ü"]


def _bounds(metadata: list[Any]) -> tuple[float | None, float | None, bool]:
    low = high = None
    strict_low = False
    for m in metadata:
        if hasattr(m, "ge"):
            low = m.ge
        if hasattr(m, "gt"):
            low, strict_low = m.gt, True
        if hasattr(m, "le"):
            high = m.le
    return low, high, strict_low


# In range and of the right type: what a valid config holds (per section where it differs).
IN_RANGE_STRINGS = {"device_id": "cam-1", "site": "s1", "stream": "cam0", "board": "x86-dev",
                    "broker": "mqtt://127.0.0.1:1883", "prometheus_host": "127.0.0.1",
                    "client_id": "c1", "username": "u"}
IN_RANGE_URI = {"source": "synthetic://64x48@10",
                "sensors": "serial:///dev/ttyUSB0?protocol=csv&name=s"}


def _valid(section: str, key: str, annotation: Any, metadata: list[Any],
           exact: bool = False) -> st.SearchStrategy[Any]:
    """Values of the field's type, around its range (``exact``: only inside it)."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is Literal:
        return st.sampled_from(get_args(annotation))
    if args and get_origin(annotation) is not dict and get_origin(annotation) is not list:
        if all(get_origin(a) is Literal for a in args):  # a union of Literals
            return st.sampled_from([v for a in args for v in get_args(a)])
        return _valid(section, key, args[0], metadata, exact)
    low, high, strict_low = _bounds(metadata)
    if annotation is bool:
        return st.booleans()
    if annotation is ByteSize:
        inside = st.integers(int(low or 0), int(high or 2**40))
        return inside if exact else st.one_of(
            inside, st.sampled_from(["64MiB", "1KiB", "1 GB", "12 parsecs", "-1MiB"]))
    if annotation is int:
        if exact:
            return st.integers(int(low or 0), int(min(high if high is not None else 100, 10**6)))
        return st.integers(int(low if low is not None else -10) - 2,
                           int(high if high is not None else 10**6) + 2)
    if annotation is float:
        lo = low if low is not None else -10.0
        inside = st.floats(lo, high if high is not None else 1e6, exclude_min=strict_low)
        return inside if exact else st.one_of(
            inside, st.sampled_from([lo - 1, (high or 1e300) * 2, 1e308]))
    if get_origin(annotation) is dict:
        classes = ["event", "result", "shard", "telemetry"]
        if exact:
            return st.dictionaries(st.sampled_from(classes), st.integers(0, 1000), max_size=4)
        return st.dictionaries(st.sampled_from([*classes, "bogus"]), st.integers(-5, 2000),
                               max_size=4)
    if get_origin(annotation) is list:
        return st.just([]) if exact else st.lists(st.sampled_from(["s", "gps", "nope"]), max_size=2)
    if annotation is str:
        if exact:
            return st.just(IN_RANGE_URI[section] if key == "uri" else IN_RANGE_STRINGS.get(key, "x"))
        return st.one_of(st.sampled_from(EXAMPLES.get(key, ["x"])), st.text(max_size=20))
    return st.sampled_from(["state", "sub/dir"] if exact else PATHS)  # Path


def _fields(section: str, model: Any, exact: bool = False) -> dict[str, st.SearchStrategy[Any]]:
    if exact:
        return {k: _valid(section, k, f.annotation, f.metadata, exact=True)
                for k, f in model.model_fields.items()}
    return {k: st.one_of(_valid(section, k, f.annotation, f.metadata),
                         _valid(section, k, f.annotation, f.metadata), anything)
            for k, f in model.model_fields.items()}


SENSOR_MODEL = get_args(AgentConfig.model_fields["sensors"].annotation)[0]
SECTIONS = {s: _fields(s, f.annotation) for s, f in AgentConfig.model_fields.items()
            if s != "sensors"}
SENSOR = _fields("sensors", SENSOR_MODEL)
IN_RANGE = {s: _fields(s, f.annotation, exact=True) for s, f in AgentConfig.model_fields.items()
            if s not in ("sensors", "agent", "metrics", "mqtt")}


@st.composite
def table(draw: st.DrawFn, fields: dict[str, st.SearchStrategy[Any]]) -> dict[str, Any]:
    keys = draw(st.lists(st.sampled_from(sorted(fields)), max_size=4, unique=True))
    out = {k: draw(fields[k]) for k in keys}
    if draw(st.integers(0, 15)) == 0:
        out[draw(st.sampled_from(["bogus", "password", "Device_ID", "a.b", "x\ny"]))] = 1
    return out


@st.composite
def config_docs(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for section in draw(st.lists(st.sampled_from(sorted(SECTIONS)), max_size=4, unique=True)):
        doc[section] = draw(st.one_of(table(SECTIONS[section]), table(SECTIONS[section]),
                                      table(SECTIONS[section]), anything))
    if draw(st.integers(0, 4)) == 0:
        doc["sensors"] = draw(st.one_of(st.lists(table(SENSOR), min_size=1, max_size=2), anything))
    if draw(st.integers(0, 15)) == 0:
        doc[draw(st.sampled_from(["cameras", "Agent", "metrics2"]))] = {"x": 1}
    return doc


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


def to_toml(doc: dict[str, Any]) -> str:
    plain = [f"{json.dumps(k)} = {toml_value(v)}" for k, v in doc.items()
             if not isinstance(v, dict) and not (k == "sensors" and isinstance(v, list)
                                                  and all(isinstance(x, dict) for x in v))]
    lines = plain[:]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines += [f"[{k}]", *(f"{json.dumps(a)} = {toml_value(b)}" for a, b in v.items())]
        elif k == "sensors" and isinstance(v, list) and all(isinstance(x, dict) for x in v):
            for entry in v:
                lines += ["[[sensors]]", *(f"{json.dumps(a)} = {toml_value(b)}"
                                           for a, b in entry.items())]
    return "\n".join(lines) + "\n"


def check_config(text: str, path: Path) -> AgentConfig | None:
    """The property: the config loads, or one ConfigError line says why; nothing else."""
    path.write_text(text, encoding="utf-8")
    try:
        return load_config(path)
    except ConfigError as exc:
        assert exc.message and "\n" not in str(exc), repr(str(exc))
        return None


def test_to_toml_round_trips() -> None:
    import tomllib

    doc = {"agent": {"device_id": "a\"b", "shutdown_grace_s": 1.5}, "x": [1, 2],
           "sensors": [{"uri": "serial:///dev/x", "model": "m"}], "m": {"t": {"a": 1}}}
    assert tomllib.loads(to_toml(doc)) == doc


@fuzz(1000)
@given(config_docs())
def test_random_configs_load_or_say_why(doc: dict[str, Any]) -> None:
    check_config(to_toml(doc), WORK / "fuzz.toml")


@fuzz(300)
@given(st.text(alphabet=st.sampled_from('[]="\'\n.=#ab_1 {},\\tx\x00é'), max_size=60))
def test_random_toml_text_loads_or_says_why(text: str) -> None:
    check_config(text, WORK / "text.toml")


@pytest.mark.slow
@fuzz(10_000)
@given(config_docs())
def test_random_configs_load_or_say_why_slow(doc: dict[str, Any]) -> None:
    check_config(to_toml(doc), WORK / "fuzz-slow.toml")


def _one_line_or_success(out: subprocess.CompletedProcess[str]) -> None:
    text = out.stdout + out.stderr
    assert "Traceback" not in text and "internal error" not in text, text
    assert out.returncode in (0, 2), (out.returncode, text)
    if out.returncode == 2:
        errors = [line for line in out.stderr.splitlines() if line.startswith("lepton-agent")]
        assert len(errors) == 1, out.stderr


def _processes(doc: dict[str, Any], name: str) -> None:
    """``config check`` and a one-frame offline ``run`` on the config, as real processes. The
    run's source, model and state directory come from flags (they beat the file), so that a
    valid config runs here and ends; everything else is the fuzzed config."""
    work = WORK / name
    work.mkdir(exist_ok=True)
    path = work / "agent.toml"
    path.write_text(to_toml(doc), encoding="utf-8")
    env = {**os.environ, "XDG_STATE_HOME": str(work / "state-home")}
    check = subprocess.run(agent_cmd("config", "check", str(path)), capture_output=True,
                           text=True, cwd=work, env=env, timeout=120)
    _one_line_or_success(check)
    run = subprocess.run(agent_cmd("run", "--config", str(path), "--offline", "--max-frames", "1",
                                   "--source", "synthetic://64x48@30", "--pace", "fast",
                                   "--model", str(DEFAULT_MODEL), "--state-dir", str(work / "s")),
                         capture_output=True, text=True, cwd=work, env=env, timeout=300)
    _one_line_or_success(run)
    if check.returncode == 2:  # what config check refuses, run refuses too (flags aside)
        assert run.returncode == 2, (check.stderr, run.stdout, run.stderr)


SAFE_FOR_PROCESSES = {k: v for k, v in SECTIONS.items() if k not in ("agent", "metrics")}


@st.composite
def runnable_docs(draw: st.DrawFn) -> dict[str, Any]:
    """Config docs without keys that would reach outside the test's directory when valid
    (a status socket or a Prometheus port on the host)."""
    doc = draw(config_docs())
    for section in ("agent", "metrics"):
        if isinstance(doc.get(section), dict):
            doc[section] = {k: v for k, v in doc[section].items()
                            if k not in ("status_socket", "prometheus_port", "prometheus_host")}
    return doc


@st.composite
def in_range_docs(draw: st.DrawFn) -> dict[str, Any]:
    """Configs of values in their ranges, so that most of them load and ``run`` really runs."""
    doc: dict[str, Any] = {}
    for section in draw(st.lists(st.sampled_from(sorted(IN_RANGE)), max_size=5, unique=True)):
        fields = IN_RANGE[section]
        keys = draw(st.lists(st.sampled_from(sorted(fields)), max_size=5, unique=True))
        doc[section] = {k: draw(fields[k]) for k in keys}
    return doc


@fuzz(6)
@given(st.one_of(runnable_docs(), in_range_docs()))
def test_config_check_and_run_processes_on_random_configs(doc: dict[str, Any]) -> None:
    _processes(doc, "proc")


@pytest.mark.slow
@fuzz(80)
@given(st.one_of(runnable_docs(), in_range_docs()))
def test_config_check_and_run_processes_on_random_configs_slow(doc: dict[str, Any]) -> None:
    _processes(doc, "proc-slow")


# -- command lines ---------------------------------------------------------------------------------

def _commands() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every leaf (sub)command and its parser: ("run",), ("config", "check"), ..."""
    from agent.cli import build_parser

    found: dict[tuple[str, ...], argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, prefix: tuple[str, ...]) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            found[prefix] = parser
        for sub in subs:
            for name, child in sub.choices.items():
                walk(child, (*prefix, name))

    walk(build_parser(), ())
    return found


COMMANDS = _commands()
GOOD_TOML = WORK / "good.toml"
GOOD_TOML.write_text(f'[agent]\nstate_dir = "{WORK / "state"}"\n')
BAD_TOML = WORK / "bad.toml"
BAD_TOML.write_text("[agent]\nshutdown_grace_s = true\n")
GARBAGE = WORK / "garbage.bin"
GARBAGE.write_bytes(bytes(range(256)))
PATH_VALUES = [str(GOOD_TOML), str(BAD_TOML), str(GARBAGE), str(WORK), str(WORK / "missing"),
               str(WORK / "out" / "clip.avi"), str(WORK / "clip.avi"), str(WORK / "clip.gif"),
               str(DEFAULT_MODEL), str(DEFAULT_MODEL / "model.tflite"), "/proc/nope/x", "",
               "nul\x00byte"]
STRINGS = ["mqtt://127.0.0.1:1", "mqtt://u:pw@h", "tcp://h", "sqlite:///" + str(WORK / "i.db"),
           "postgresql://nobody@127.0.0.1:1/x", "synthetic://64x48@10", "serial://", "rpi4",
           "amiga", "cam0", "a/b", "640x480", "0x0", "-1", "", "--", "-", "=", "%s", "é"]
# Commands that are cheap and local enough to run in-process on random arguments.
RUNNABLE = {("config", "check"), ("models", "inspect"), ("status",), ("synth-clip",), ("diag",)}


def _number(kind: str) -> st.SearchStrategy[str]:
    ints = st.integers(-3, 3) | st.integers(-(2**70), 2**70)
    if kind == "int":
        return ints.map(str) | st.sampled_from(["1.5", "x", "0x10", "1e3", ""])
    return (st.floats() | ints).map(str) | st.sampled_from(["nan", "inf", "-inf", "1e999", "x"])


def _value(action: argparse.Action, command: tuple[str, ...]) -> st.SearchStrategy[str]:
    if action.choices:
        return st.sampled_from([*(str(c) for c in action.choices), "nope"])
    kind = getattr(action.type, "__name__", "")
    if kind in ("int", "float"):
        if command == ("synth-clip",) and action.dest == "frames":
            return st.sampled_from(["1", "2", "0", "-1", "x"])
        return _number(kind)
    if action.dest == "size":
        return st.sampled_from(["64x48", "16x16", "0x0", "x", "64x", "-64x48", "9x9x9"])
    if action.dest == "checks" and command == ("diag",):
        return st.sampled_from(["config", "memory", "kernels", "serial", "nope", "bundle"])
    return st.sampled_from(PATH_VALUES) | st.sampled_from(STRINGS) | st.text(max_size=8)


@st.composite
def command_lines(draw: st.DrawFn) -> tuple[tuple[str, ...], list[str]]:
    command = draw(st.sampled_from(sorted(COMMANDS)))
    parser = COMMANDS[command]
    argv = list(command)
    actions = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    for action in draw(st.lists(st.sampled_from(actions), max_size=5)) if actions else []:
        values = [draw(_value(action, command))
                  for _ in range(draw(st.integers(0, 2)) if action.nargs in ("*", "+") else
                                 (0 if action.nargs == 0 else 1))]
        if action.option_strings:
            argv.append(draw(st.sampled_from(action.option_strings)))
        argv += values
    if draw(st.integers(0, 10)) == 0:
        argv.insert(draw(st.integers(0, len(argv))), draw(st.sampled_from(
            ["--bogus", "-x", "--", "--help", "extra"])))
    if command == ("diag",):  # every check, or a bundle of them, takes seconds: name one
        argv = [a for a in argv if a != "bundle"] + [draw(st.sampled_from(["config", "memory"]))]
    return command, argv


def check_command_line(command: tuple[str, ...], argv: list[str]) -> None:
    """Parses, or is a usage error (exit 2, or 0 for --help); runs the cheap commands, which
    never end in an exception nobody expected (exit 1 with ``internal error``)."""
    from agent import cli
    from agent.cli.common import load_config_from_args

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            args = cli.build_parser().parse_args(argv)
        except SystemExit as exc:
            assert exc.code in (0, 2), (argv, err.getvalue())
            return
        if command == ("run",):
            with contextlib.suppress(ConfigError):
                load_config_from_args(args)
            return
        if command not in RUNNABLE:
            return
        code = cli.main(argv)
    assert code in (0, 1, 2, 3), (argv, code, err.getvalue())  # diag: 1 is a warning
    assert "internal error" not in err.getvalue(), (argv, err.getvalue())
    assert "Traceback" not in out.getvalue() + err.getvalue()


@fuzz(400)
@given(command_lines())
def test_random_command_lines_never_crash(case: tuple[tuple[str, ...], list[str]]) -> None:
    check_command_line(*case)


@pytest.mark.slow
@fuzz(5_000)
@given(command_lines())
def test_random_command_lines_never_crash_slow(case: tuple[tuple[str, ...], list[str]]) -> None:
    check_command_line(*case)


def test_every_command_is_fuzzed() -> None:
    assert set(COMMANDS) >= {("run",), ("config", "check"), ("models", "inspect"), ("ingest",),
                             ("demo",), ("status",), ("diag",), ("bench", "pipeline"),
                             ("bench", "kernels"), ("bench", "sync"), ("faults",), ("synth-clip",)}
    assert ROOT.is_dir()
