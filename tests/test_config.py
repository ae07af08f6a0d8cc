"""Config: typed, validated once, errors name file, key and line; overlays and overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_config
from agent.config.loader import BOARDS_DIR, Secrets, find_key_line
from agent.errors import ConfigError
from tests.conftest import run_cli


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_defaults_load() -> None:
    cfg = load_config()
    assert cfg.source.uri.startswith("synthetic://") and cfg.mqtt.publish_window > 0


@pytest.mark.parametrize("board", ["rpi4", "rpi5", "jetson-orin-nano", "x86-dev", "qemu-arm64"])
def test_every_board_overlay_is_valid(board: str) -> None:
    cfg = load_config(board=board)
    assert cfg.agent.board == board
    assert (BOARDS_DIR / f"{board}.toml").is_file()


def test_layering_defaults_board_file_cli(tmp_path: Path) -> None:
    path = write(tmp_path, '[agent]\nboard = "rpi4"\n[model]\nnum_threads = 2\n')
    cfg = load_config(path, overrides={"model": {"delegate": "none"}})
    assert cfg.source.uri == "v4l2:///dev/video0"  # from the board
    assert cfg.model.num_threads == 2  # the file beats the board
    assert cfg.model.delegate == "none"  # the command line beats both


def test_unknown_key_names_file_key_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[agent]\ndevice_id = "a"\n\n[mqtt]\nbroker = "mqtt://h:1"\npublsh_window = 3\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert (err.file, err.key, err.line) == (str(path), "mqtt.publsh_window", 6)
    assert "unknown key" in str(err) and f"{path}:6" in str(err)


def test_unknown_dotted_and_nested_keys(tmp_path: Path) -> None:
    path = write(tmp_path, 'source.uri = "synthetic://64x64@5"\nsource.colour = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.key, info.value.line) == ("source.colour", 2)
    path = write(tmp_path, '[cameras]\nx = 1\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.key, info.value.line) == ("cameras", 1)


def test_bad_value_is_explained(tmp_path: Path) -> None:
    path = write(tmp_path, '[model]\ndelegate = "gpu"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.line == 2 and "xnnpack" in str(info.value)
    path = write(tmp_path, '[source]\nuri = "synthetic://axb"\n')
    with pytest.raises(ConfigError, match=r"synthetic://WxH@FPS"):
        load_config(path)


def test_secret_in_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[mqtt]\nusername = "u"\npassword = "hunter2"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "CREDENTIALS_DIRECTORY" in str(info.value) and "hunter2" not in str(info.value)


def test_secrets_from_credentials_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mqtt-password").write_text("s3cret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    secrets = Secrets.from_environment()
    assert secrets.mqtt_password == "s3cret" and "s3cret" not in repr(secrets)


def test_malformed_toml_reports_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[agent]\ndevice_id = "a\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.line == 2 and "not valid TOML" in str(info.value)


def test_unknown_board_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match="rpi4"):
        load_config(board="commodore64")


def test_find_key_line() -> None:
    text = '# c\n[a]\nx = 1\n[a.b]\ny = 2\n[c]\n"q" = 3\n'
    assert find_key_line(text, ("a", "x")) == 3
    assert find_key_line(text, ("a", "b", "y")) == 5
    assert find_key_line(text, ("c", "q")) == 7
    assert find_key_line(text, ("a", "b")) == 4


def test_config_check_cli(tmp_path: Path) -> None:
    good = write(tmp_path, '[agent]\ndevice_id = "cam-7"\n')
    out = run_cli("config", "check", str(good))
    assert out.returncode == 0 and "ok" in out.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[agent]\ndevice = "x"\n')
    out = run_cli("config", "check", str(bad))
    assert out.returncode == 2
    assert f"{bad}:2 [agent.device]: unknown key" in out.stderr


def test_sensor_errors_name_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[agent]\ndevice_id = "x"\n\n[[sensors]]\n'
                    'uri = "serial:///dev/ttyUSB0?protocol=nmea0183&name=gps"\n\n'
                    '[[sensors]]\nuri = "serial:///dev/ttyUSB1?protocol=modbus"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert (err.value.file, err.value.line, err.value.key) == (str(path), 8, "sensors.1.uri")
    assert "unknown protocol 'modbus'" in err.value.message
    path.write_text('[agent]\nsite = "a"\n\n[source]\nattach_sensors = ["gps"]\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert (err.value.line, err.value.key) == (5, "source.attach_sensors")
    assert "no [[sensors]] entry" in err.value.message


# -- strict types (defect 16) and the documentation of every key (defect 17) ---------------------

def schema_keys() -> list[tuple[str, str, object]]:
    """(section, key, annotation) for every key of the schema; ``sensors`` is the [[sensors]] list."""
    from typing import get_args

    from agent.config.schema import AgentConfig

    keys = []
    for section, field in AgentConfig.model_fields.items():
        model = field.annotation
        if section == "sensors":
            model = get_args(model)[0]
        keys += [(section, key, f.annotation) for key, f in model.model_fields.items()]  # type: ignore[union-attr]
    return keys


def _toml_for(section: str, key: str, value: str) -> str:
    if section == "sensors":
        extra = '' if key == "uri" else 'uri = "serial:///dev/ttyUSB0?protocol=csv&name=s"\n'
        return f"[[sensors]]\n{extra}{key} = {value}\n"
    return f"[{section}]\n{key} = {value}\n"


def _kind(annotation: object) -> str:
    from typing import get_args

    from pydantic import ByteSize

    kinds = {a for a in (get_args(annotation) or (annotation,)) if a is not type(None)}
    if kinds <= {int, float, ByteSize}:
        return "number"
    if kinds == {bool}:
        return "bool"
    return "other"


NUMERIC = [(s, k) for s, k, a in schema_keys() if _kind(a) == "number"]
BOOLEAN = [(s, k) for s, k, a in schema_keys() if _kind(a) == "bool"]


@pytest.mark.parametrize(("section", "key"), NUMERIC)
def test_a_boolean_is_never_a_number(tmp_path: Path, section: str, key: str) -> None:
    path = write(tmp_path, _toml_for(section, key, "true"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    where = f"sensors.0.{key}" if section == "sensors" else f"{section}.{key}"
    assert info.value.key is not None and info.value.key.startswith(where), info.value
    assert "not true" in info.value.message or "byte string" in info.value.message


@pytest.mark.parametrize(("section", "key"), BOOLEAN)
def test_a_number_or_string_is_never_a_boolean(tmp_path: Path, section: str, key: str) -> None:
    for value in ("1", '"yes"'):
        with pytest.raises(ConfigError, match=rf"\[{section}\.{key}\]: Input should be a valid "
                                              rf"boolean, not {value}"):
            load_config(write(tmp_path, _toml_for(section, key, value)))


def test_numbers_keep_their_types(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "[agent]\nshutdown_grace_s = 7\n[model]\nnum_threads = 3\n"))
    assert cfg.agent.shutdown_grace_s == 7.0 and cfg.model.num_threads == 3  # an int is a float
    for text, expect in [("[model]\nnum_threads = 2.0\n", "valid integer, not 2.0"),
                         ('[model]\nnum_threads = "2"\n', 'valid integer, not "2"'),
                         ("[mqtt]\ntelemetry_interval_s = inf\n", "finite number"),
                         ("[source]\nreconnect_max_s = nan\n", "finite number"),
                         ('[agent]\ndevice_id = 5\n', "valid string, not 5"),
                         ("[agent]\nstate_dir = 1.5\n", "should be a path (a string), not 1.5"),
                         ("agent = 5\n", "[agent]: Input should be a table")]:
        with pytest.raises(ConfigError) as info:
            load_config(write(tmp_path, text))
        assert expect in str(info.value), (text, str(info.value))


def test_shutdown_grace_true_is_refused_by_config_check(tmp_path: Path) -> None:
    path = write(tmp_path, "[agent]\nshutdown_grace_s = true\n")
    out = run_cli("config", "check", str(path))
    assert out.returncode == 2
    assert out.stderr.startswith(f"lepton-agent: error: {path}:2 [agent.shutdown_grace_s]: "
                                 "Input should be a valid number, not true")


def test_docs_config_names_every_key() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()
    missing = [f"{s}.{k}" for s, k, _ in schema_keys()
               if (f"`[[sensors]] {k}`" if s == "sensors" else f"`{s}.{k}`") not in doc]
    assert not missing, f"docs/config.md does not document: {', '.join(missing)}"


def test_what_the_config_fuzz_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each one raised something else than a ConfigError, or gave a message of two lines, or let
    a flag hide a broken file, before the fix."""
    from agent.cli import main

    cases = [('[agent]\n"x\\ny" = 1\n', '[agent."x\\ny"]: unknown key'),
             ('[agent]\nstate_dir = "a\\u0000b"\n', "[agent.state_dir]: a path cannot hold a NUL"),
             ("[[sensors]]\nrecord_interval_s = 1\n", f"{tmp_path / 'agent.toml'}:1 "
                                                       "[sensors.0.uri]: Field required"),
             ("[mqtt]\nsession_expiry_s = 1099511627776\n", "less than or equal to 4294967295"),
             ("[outbox]\npriorities = {event = 1180591620717411303424}\n", "[outbox.priorities.event]"),
             ("[outbox]\nkeep_delivered = 1180591620717411303424\n", "less than or equal to")]
    for text, expect in cases:
        with pytest.raises(ConfigError) as info:
            load_config(write(tmp_path, text))
        assert expect in str(info.value) and "\n" not in str(info.value), str(info.value)
    path = write(tmp_path, "agent = false\n")
    with pytest.raises(ConfigError, match=r"agent.toml:1 \[agent\]: Input should be a table"):
        load_config(path, overrides={"agent": {"state_dir": str(tmp_path)}})  # run --state-dir
    assert main(["config", "check", "nul\x00byte.toml"]) == 2
    assert "cannot read: embedded null byte" in capsys.readouterr().err
    assert main(["synth-clip", str(tmp_path / "nul\x00byte.avi")]) == 2
    assert "the name holds a NUL byte" in capsys.readouterr().err
