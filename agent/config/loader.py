"""Loading configuration: defaults < board overlay < config file < command-line flags.

Each layer is a TOML table; they are merged, then validated once. Errors name the file,
the key path and the line where the offending key was written.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.config.pipelines import SINGLE, label, problems, rules_beside_pipelines
from agent.config.schema import (
    LINES,
    PIPELINES,
    ZONES,
    AgentConfig,
    LineSection,
    PipelineSection,
    SourceSection,
    ZoneSection,
)
from agent.errors import ConfigError
from agent.paths import shared_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BOARDS_DIR = shared_dir("board_configs")
_SECRET_WORDS = ("password", "secret", "token", "private_key")
_HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
_ARRAY_HEADER = re.compile(r"^\s*\[\[\s*([^\[\]]+?)\s*\]\]\s*(#.*)?$")
_KEYED_MESSAGE = re.compile(r"^([a-z_]+(?:\.[a-z_0-9]+)+): ")
_KEY = re.compile(r"""^\s*([A-Za-z0-9_."'-]+?)\s*=""")


@dataclass(frozen=True)
class Layer:
    """One source of configuration values."""

    name: str
    data: dict[str, Any]
    text: str | None = None


@dataclass(frozen=True)
class Secrets:
    """Secrets read from systemd's ``$CREDENTIALS_DIRECTORY``, never from a config file."""

    mqtt_password: str | None = None
    tls_key_file: Path | None = None

    @classmethod
    def from_environment(cls) -> Secrets:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            return cls()
        path = Path(directory) / "mqtt-password"
        key = Path(directory) / "tls-key"
        key_file = key if key.is_file() and key.stat().st_size else None
        try:
            return cls(mqtt_password=path.read_text().strip() or None, tls_key_file=key_file)
        except FileNotFoundError:
            return cls(tls_key_file=key_file)
        except OSError as exc:
            raise ConfigError(f"cannot read credential: {exc.strerror}", file=str(path),
                              fix="check the LoadCredential= line of the unit") from exc

    def __repr__(self) -> str:
        return f"Secrets(mqtt_password={'<set>' if self.mqtt_password else None})"


def _split_dotted(key: str) -> list[str]:
    return [part.strip().strip("\"'") for part in key.split(".")]


def find_key_line(text: str, path: tuple[str, ...]) -> int | None:
    """The 1-based line where ``path`` (or its nearest written ancestor) is set in ``text``."""
    table: list[str] = []
    best: tuple[int, int] | None = None
    arrays: dict[str, int] = {}
    def within(parts: list[str]) -> list[str]:
        # [pipelines.motion], [[pipelines.zones]]: in the last [[pipelines]] written so far
        out: list[str] = []
        for part in parts:
            out.append(part)
            if ".".join(out) in arrays:
                out.append(str(arrays[".".join(out)] - 1))
        return out

    for lineno, line in enumerate(text.splitlines(), start=1):
        array = _ARRAY_HEADER.match(line)
        header = _HEADER.match(line)
        if array:  # [[sensors]]: the n-th one is sensors.<n-1>; [[pipelines.zones]] counts per pipeline
            parts = _split_dotted(array.group(1))
            name = ".".join([*within(parts[:-1]), parts[-1]])
            arrays[name] = arrays.get(name, 0) + 1
            table = [*name.split("."), str(arrays[name] - 1)]
            full = table
            if tuple(table[:-1]) == path:  # the array itself: where its first table starts
                return lineno
        elif header:
            parts = _split_dotted(header.group(1))
            table = [*within(parts[:-1]), parts[-1]]
            full = table
        else:
            key = _KEY.match(line)
            if not key:
                continue
            full = table + _split_dotted(key.group(1))
        depth = 0
        while depth < min(len(full), len(path)) and full[depth] == path[depth]:
            depth += 1
        if depth == len(full) and (best is None or depth > best[0]):
            best = (depth, lineno)
            if depth == len(path):
                return lineno
    return best[1] if best else None


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _has_path(data: dict[str, Any], path: tuple[str, ...]) -> bool:
    node: Any = data
    for part in path:
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return False
    return True


def read_toml(path: Path) -> Layer:
    """Read one TOML file as a layer, with a clear error for a missing or malformed file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError("file not found", file=str(path),
                          fix="check the path, or run without --config to use defaults") from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # ValueError: a NUL in the path
        raise ConfigError(f"cannot read: {exc}", file=repr(str(path))[1:-1]) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None)
        if line is None:
            found = re.search(r"line (\d+)", str(exc))
            line = int(found.group(1)) if found else None
        raise ConfigError(f"not valid TOML: {exc}", file=str(path), line=line,
                          fix="fix the syntax at that line") from exc
    return Layer(str(path), data, text)


def board_layer(name: str, boards_dir: Path = BOARDS_DIR) -> Layer:
    """The overlay for a named board (``board_configs/NAME.toml``)."""
    path = boards_dir / f"{name}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in boards_dir.glob("*.toml")) if boards_dir.is_dir() else []
        raise ConfigError(f"unknown board {name!r}", key="agent.board",
                          fix=f"use one of: {', '.join(known) or '(no board_configs found)'}")
    return read_toml(path)


def _shown(value: Any) -> str:
    """A value as it was written in TOML, briefly: ``true``, ``"5"``, ``1.5``, an array."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    text = json.dumps(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _table(data: dict[str, Any], name: str) -> dict[str, Any]:
    """``data[name]`` when it is a table; a section written as a plain value is left for the
    schema to refuse with its key and line."""
    value = data.get(name)
    return value if isinstance(value, dict) else {}


def _check_tables(layers: list[Layer]) -> None:
    """A section written as a plain value (``agent = false``) is refused in the layer that wrote
    it, before a flag of another layer (``--state-dir``) could merge a table over it."""
    for layer in layers:
        for name, value in layer.data.items():
            field = AgentConfig.model_fields.get(name)
            if field and isinstance(field.annotation, type) and not isinstance(value, dict):
                raise ConfigError(f"Input should be a table (a [section] of keys), not "
                                  f"{_shown(value)}", file=layer.name, key=name,
                                  line=find_key_line(layer.text, (name,)) if layer.text else None,
                                  fix=f"write it as [{name}] followed by its keys")


def _error_for(exc: ValidationError, layers: list[Layer], prefix: tuple[str, ...] = (),
               pipelines: Any = None) -> ConfigError:
    """The first error of ``exc`` as a ConfigError naming the layer, key and line. ``prefix``:
    where the validated value sits (``pipelines``), ``pipelines`` the merged list, to name the
    pipeline an error is in."""
    first = exc.errors()[0]
    path = prefix + tuple(str(p) for p in first["loc"])
    keyed = _KEYED_MESSAGE.match(first["msg"].removeprefix("Value error, "))
    if not path and keyed:  # a check across sections names the key it is about
        path = tuple(keyed.group(1).split("."))
    key = ".".join(p if p.isprintable() else json.dumps(p) for p in path)  # stays one line
    layer = next((lay for lay in reversed(layers) if _has_path(lay.data, path)), None) or next(
        (lay for lay in reversed(layers) if len(path) > 1 and _has_path(lay.data, path[:-1])),
        None)  # a required key that is missing: the table that lacks it
    line = find_key_line(layer.text, path) if layer and layer.text else None
    where = layer.name if layer else None
    if first["type"] == "extra_forbidden":
        leaf = path[-1].lower()
        if any(word in leaf for word in _SECRET_WORDS):
            return ConfigError("secrets are never read from the config file", file=where, key=key,
                               line=line, fix="remove it and put it in $CREDENTIALS_DIRECTORY/"
                               "mqtt-password (systemd LoadCredential=)")
        return ConfigError("unknown key" + (f" in {_which(pipelines, path)}" if prefix else ""),
                           file=where, key=key, line=line,
                           fix="remove it or check its spelling against docs/config.md")
    message = first["msg"].removeprefix("Value error, ")
    if prefix and len(path) > 1:
        message = f"{_which(pipelines, path)}: {message}"
    if keyed:
        message = message[keyed.end():]
    if first["type"] == "path_type":
        message = "Input should be a path (a string)"
    elif first["type"] == "model_type":
        message = "Input should be a table (a [section] of keys)"
    if first["type"].endswith(("_type", "_parsing", "finite_number")) and "input" in first:
        message += f", not {_shown(first['input'])}"  # strict types: say what was written
    more = len(exc.errors()) - 1
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    return ConfigError(message, file=where, key=key, line=line,
                       fix="correct the value; `lepton-agent config check FILE` re-checks")


def _which(pipelines: Any, path: tuple[str, ...]) -> str:
    """``pipelines[1] (stream "south")`` for a key path ``pipelines.1...``; for the top-level
    ``lines``/``zones`` (``pipelines`` is then the one pipeline's label) that label."""
    if isinstance(pipelines, str):
        return pipelines
    index = int(path[1]) if len(path) > 1 and path[1].isdigit() else 0
    entry = pipelines[index] if isinstance(pipelines, list) and index < len(pipelines) else {}
    return label(index, entry.get("stream") if isinstance(entry, dict) else None)


def _located(layers: list[Layer], path: tuple[str, ...]) -> tuple[Layer | None, int | None]:
    layer = next((lay for lay in reversed(layers) if _has_path(lay.data, path)), None)
    line = find_key_line(layer.text, path) if layer and layer.text else None
    return layer, line


def _check_pipelines(data: Any, layers: list[Layer],
                     overlay: Layer | None) -> tuple[PipelineSection, ...]:
    """Validate the ``[[pipelines]]`` tables (``data``) with errors naming the pipeline, and
    refuse ``source.uri``/``source.stream`` set beside them by the file or a flag (a board's
    source is only a default)."""
    if not isinstance(data, list) or not all(isinstance(entry, dict) for entry in data):
        layer, line = _located(layers, ("pipelines",))
        raise ConfigError(f"should be an array of tables, not {_shown(data)}",
                          file=layer.name if layer else None, key="pipelines", line=line,
                          fix="write each pipeline as a [[pipelines]] table (stream, source, ...)")
    try:
        sections = tuple(PIPELINES.validate_python(data))
    except ValidationError as exc:
        raise _error_for(exc, layers, ("pipelines",), data) from exc
    where, _ = _located(layers, ("pipelines",))
    for key in ("uri", "stream"):
        for layer in reversed(layers):
            # a board's source is only a default, like the built-in one
            if layer is overlay or not _has_path(layer.data, ("source", key)):
                continue
            written = f"[[pipelines]] in {where.name}" if where else "[[pipelines]]"
            raise ConfigError(
                f"source.{key} is set together with {written}, and each pipeline names its own "
                f"{'source' if key == 'uri' else 'stream'}", file=layer.name,
                key=f"source.{key}", line=find_key_line(layer.text, ("source", key))
                if layer.text else None,
                fix=("drop the flag and " if layer.text is None else "") +
                "put the source in a [[pipelines]] table, or drop [[pipelines]]")
    return sections


def _check_rules(name: str, data: Any, layers: list[Layer],
                 merged: dict[str, Any]) -> tuple[LineSection, ...] | tuple[ZoneSection, ...]:
    """Validate the top-level ``[[lines]]`` or ``[[zones]]`` (``data``) of the one pipeline of
    ``[source]``, with errors naming that pipeline."""
    if not isinstance(data, list) or not all(isinstance(entry, dict) for entry in data):
        layer, line = _located(layers, (name,))
        raise ConfigError(f"should be an array of tables, not {_shown(data)}",
                          file=layer.name if layer else None, key=name, line=line,
                          fix=f"write each as a [[{name}]] table (name, points, ...)")
    source = _table(merged, "source")
    stream = source.get("stream", SourceSection.model_fields["stream"].default)
    which = f"{SINGLE} (stream {json.dumps(stream) if isinstance(stream, str) else '?'})"
    try:
        if name == "lines":
            return tuple(LINES.validate_python(data))
        return tuple(ZONES.validate_python(data))
    except ValidationError as exc:
        raise _error_for(exc, layers, (name,), which) from exc


def load_config(
    path: Path | None = None,
    *,
    board: str | None = None,
    overrides: dict[str, Any] | None = None,
    boards_dir: Path = BOARDS_DIR,
) -> AgentConfig:
    """Load, merge and validate the configuration. Raises ConfigError naming file, key and line."""
    file_layer = read_toml(path) if path else None
    cli_layer = Layer("command line", overrides or {})
    board_name = board or _table(cli_layer.data, "agent").get("board") or (
        _table(file_layer.data, "agent").get("board") if file_layer else None)
    layers: list[Layer] = []
    overlay: Layer | None = None
    if board_name:
        if not isinstance(board_name, str):
            raise ConfigError("must be a string", key="agent.board",
                              file=file_layer.name if file_layer else None)
        overlay = board_layer(board_name, boards_dir)
        if "board" in overlay.data.get("agent", {}):
            raise ConfigError("a board overlay cannot name another board", file=overlay.name,
                              key="agent.board")
        layers.append(overlay)
    if file_layer:
        layers.append(file_layer)
    layers.append(cli_layer)
    _check_tables(layers)
    merged: dict[str, Any] = {}
    state_directory = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state_directory:  # systemd's StateDirectory= is the default state_dir of a service
        merged = {"agent": {"state_dir": state_directory}}
    for layer in layers:
        merged = _merge(merged, layer.data)
    if board_name and isinstance(merged.setdefault("agent", {}), dict):
        merged["agent"]["board"] = board_name
    sections = _check_pipelines(merged.pop("pipelines"), layers, overlay) \
        if "pipelines" in merged else None
    for name in ("lines", "zones"):
        if sections is not None and name in merged:  # before their content: that is not the fix
            problem = rules_beside_pipelines(name)
            where, line = _located(layers, problem.path())
            raise ConfigError(problem.message, file=where.name if where else None,
                              key=name, line=line, fix=problem.fix)
    rules = {name: _check_rules(name, merged.pop(name), layers, merged)
             for name in ("lines", "zones") if name in merged}
    try:
        config = AgentConfig.model_validate(merged)
    except ValidationError as exc:
        raise _error_for(exc, layers) from exc
    if rules:
        lines = [r for r in rules.get("lines", ()) if isinstance(r, LineSection)]
        zones = [r for r in rules.get("zones", ()) if isinstance(r, ZoneSection)]
        config = config.with_rules(lines, zones, check=False)
    if sections is not None:
        config = config.with_pipelines(sections, check=False)
    for problem in problems(config)[:1]:
        keys = problem.path()
        where, line = _located(layers, keys)
        raise ConfigError(problem.message, file=where.name if where else None,
                          key=".".join(keys), line=line, fix=problem.fix)
    _check_files(config, layers)
    return config


def _check_files(config: AgentConfig, layers: list[Layer]) -> None:
    """Files the config names must exist now, not fail later in ``run`` with no name."""
    for key, path in (("mqtt.tls_ca_file", config.mqtt.tls_ca_file),
                      ("mqtt.tls_cert_file", config.mqtt.tls_cert_file)):
        if path is None or path.is_file():
            continue
        keys = tuple(key.split("."))
        layer = next((lay for lay in reversed(layers) if _has_path(lay.data, keys)), None)
        shown = str(path) if str(path).isprintable() else repr(str(path))  # stays one line
        raise ConfigError(f"{shown}: {'not a file' if path.exists() else 'no such file'}",
                          file=layer.name if layer else None, key=key,
                          line=find_key_line(layer.text, keys) if layer and layer.text else None,
                          fix="give the path of the PEM file (absolute, or relative to the "
                              "directory the agent starts in)")
