"""[[pipelines]]: N (stream, source, model) pipelines in one agent, loaded through the real loader.

Defaults come from [source], [model] and [motion]; without [[pipelines]] today's [source] and
[model] make exactly one pipeline. Bad input is one ConfigError naming the pipeline (index and
stream), the key, the file and line, and a fix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.config import AgentConfig, PipelineSection, PipelineSpec, load_config
from agent.config.schema import MotionSection
from agent.errors import ConfigError
from tests.conftest import run_cli

TWO = '''[agent]
thread_budget = 4

[source]
pace = "fast"
queue_size = 7
max_frames = 50
attach_window_s = 3.5

[model]
path = "models/shared"
num_threads = 3
delegate = "none"
score_threshold = 0.4

[motion]
enabled = true
every_n = 9

[[pipelines]]
stream = "north"
source = "rtsp://10.0.0.21/stream1"

[[pipelines]]
stream = "south"
source = "v4l2:///dev/video0"
model = "models/south"
threads = 1
loop = true
[pipelines.motion]
every_n = 3
'''


def write(tmp_path: Path, text: str, name: str = "agent.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def refused(path: Path, **kw: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, **kw)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
    assert info.value.fix, str(info.value)
    return info.value


def test_without_pipelines_source_and_model_make_one_pipeline(tmp_path: Path) -> None:
    path = write(tmp_path, '[source]\nuri = "clip.mp4"\nstream = "gate"\nloop = true\n'
                           '[model]\npath = "m/x.tflite"\nnum_threads = 5\nlabels = "l.txt"\n')
    cfg = load_config(path, overrides={"source": {"max_frames": 9}})
    assert cfg.pipeline_specs() == (PipelineSpec(
        stream="gate", source="clip.mp4", model=Path("m/x.tflite"), threads=5, delegate="xnnpack",
        score_threshold=None, labels=Path("l.txt"), pace="auto", drop_policy="auto", queue_size=4,
        loop=True, max_frames=9, reconnect_initial_s=0.5, reconnect_max_s=30.0, attach_sensors=(),
        attach_window_s=2.0, motion=MotionSection()),)
    assert cfg.pipelines is None


def test_defaults_alone_make_one_pipeline() -> None:
    (spec,) = load_config().pipeline_specs()
    assert (spec.stream, spec.source, spec.threads) == ("cam0", "synthetic://640x480@15", 2)


def test_pipelines_inherit_source_model_motion(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, TWO))
    north, south = cfg.pipeline_specs()
    assert (north.stream, north.source, north.model) == ("north", "rtsp://10.0.0.21/stream1",
                                                         Path("models/shared"))
    assert (south.stream, south.source, south.model) == ("south", "v4l2:///dev/video0",
                                                         Path("models/south"))
    for spec in (north, south):
        assert (spec.pace, spec.queue_size, spec.max_frames, spec.delegate) == ("fast", 7, 50, "none")
        assert (spec.score_threshold, spec.attach_window_s) == (0.4, 3.5)
    assert (north.loop, south.loop) == (False, True)
    # budget 4 over 2 pipelines: 2 each, under [model] num_threads 3; south sets its own
    assert (north.threads, south.threads) == (2, 1)
    assert north.motion == MotionSection(enabled=True, every_n=9)
    # a [pipelines.motion] table overrides only the keys it sets; the rest come from [motion]
    assert south.motion == MotionSection(enabled=True, every_n=3)
    assert cfg.thread_budget() == 4


def test_threads_default_with_the_budget(tmp_path: Path) -> None:
    three = "".join(f'[[pipelines]]\nstream = "s{i}"\nsource = "synthetic://64x48@5"\n'
                    for i in range(3))
    cfg = load_config(write(tmp_path, "[agent]\nthread_budget = 7\n" + three))
    assert [s.threads for s in cfg.pipeline_specs()] == [2, 2, 2]  # min(num_threads 2, 7 // 3)
    cfg = load_config(write(tmp_path, "[agent]\nthread_budget = 2\n" + three))
    assert [s.threads for s in cfg.pipeline_specs()] == [1, 1, 1]  # never below one
    cfg = load_config(write(tmp_path, "[agent]\nthread_budget = 30\n" + three),
                      overrides={"model": {"num_threads": 4}})  # --threads: the default
    assert [s.threads for s in cfg.pipeline_specs()] == [4, 4, 4]
    cfg = load_config(write(tmp_path, three))  # budget 0: the CPU count
    assert cfg.thread_budget() == (os.cpu_count() or 1)
    assert [s.threads for s in cfg.pipeline_specs()] == [min(2, max(1, cfg.thread_budget() // 3))] * 3


def test_flags_are_defaults_for_every_pipeline(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, TWO), overrides={
        "source": {"max_frames": 1, "pace": "realtime", "loop": True},
        "model": {"path": "models/flag", "labels": "flag.txt"}})
    north, south = cfg.pipeline_specs()
    assert (north.max_frames, north.pace, north.loop, north.model, north.labels) == (
        1, "realtime", True, Path("models/flag"), Path("flag.txt"))
    assert (south.model, south.loop) == (Path("models/south"), True)


def test_resolve_pipeline_for_a_pipeline_added_at_run_time(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, TWO))
    spec = cfg.resolve_pipeline(PipelineSection(stream="east", source="rtsp://10.0.0.22/s"))
    assert (spec.model, spec.threads, spec.queue_size) == (Path("models/shared"), 1, 7)  # 4 // 3
    with pytest.raises(ConfigError, match=r'stream "north".*pipelines\[0\]'):
        cfg.resolve_pipeline(PipelineSection(stream="north", source="rtsp://h/x"))
    with pytest.raises(ConfigError, match=r"threads.*thread budget"):
        cfg.resolve_pipeline(PipelineSection(stream="west", source="rtsp://h/x", threads=5))


def test_merged_config_shows_pipelines(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, TWO))
    dumped = cfg.model_dump(mode="json")
    assert [p["stream"] for p in dumped["pipelines"]] == ["north", "south"]
    assert AgentConfig.model_validate(dumped).pipeline_specs() == cfg.pipeline_specs()
    assert "pipelines" not in load_config().model_dump()


def test_same_file_twice_and_same_rtsp_twice_are_allowed(tmp_path: Path) -> None:
    text = "".join(f'[[pipelines]]\nstream = "s{i}"\nsource = "{uri}"\n' for i, uri in
                   enumerate(["clip.mp4", "clip.mp4", "rtsp://cam/1", "rtsp://cam/1"]))
    assert len(load_config(write(tmp_path, text)).pipeline_specs()) == 4


# -- bad input ------------------------------------------------------------------------------------

def test_duplicate_stream_names_both(tmp_path: Path) -> None:
    path = write(tmp_path, '[[pipelines]]\nstream = "a"\nsource = "x.mp4"\n\n'
                           '[[pipelines]]\nstream = "a"\nsource = "y.mp4"\n')
    err = refused(path)
    assert (err.file, err.line, err.key) == (str(path), 6, "pipelines.1.stream")
    assert 'pipelines[1] (stream "a")' in err.message and "pipelines[0]" in err.message
    assert "own stream" in (err.fix or "")


@pytest.mark.parametrize(("first", "second"), [
    ("v4l2:///dev/video0", "v4l2:///dev/video0"),
    ("v4l2:///dev/video2", "v4l2:///dev/../dev/video2"),
    ("v4l2:///dev/video0", "gst:v4l2src ! videoconvert ! appsink"),
    ("gst:v4l2src device=/dev/video1 ! appsink", "v4l2:///dev/video1"),
    ("gst:libcamerasrc ! appsink", "gst:libcamerasrc ! videoconvert ! appsink"),
    ("gst:nvarguscamerasrc sensor-id=1 ! appsink", "gst:nvarguscamerasrc sensor-id=1 ! nvvidconv ! appsink"),
])
def test_two_pipelines_on_one_camera(tmp_path: Path, first: str, second: str) -> None:
    path = write(tmp_path, f'[[pipelines]]\nstream = "a"\nsource = "{first}"\n'
                           f'[[pipelines]]\nstream = "b"\nsource = "{second}"\n')
    err = refused(path)
    assert (err.file, err.line, err.key) == (str(path), 6, "pipelines.1.source")
    assert 'pipelines[1] (stream "b")' in err.message and 'pipelines[0] (stream "a")' in err.message
    assert "camera" in err.message


def test_different_cameras_are_allowed(tmp_path: Path) -> None:
    text = "".join(f'[[pipelines]]\nstream = "s{i}"\nsource = "{uri}"\n' for i, uri in enumerate(
        ["v4l2:///dev/video0", "v4l2:///dev/video2", "gst:nvarguscamerasrc sensor-id=1 ! appsink",
         "gst:nvarguscamerasrc ! appsink", "gst:v4l2src device=/dev/video4 ! appsink"]))
    assert len(load_config(write(tmp_path, text)).pipeline_specs()) == 5


def test_unknown_key_names_the_pipeline_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[[pipelines]]\nstream = "north"\nsource = "a.mp4"\n\n'
                           '[[pipelines]]\nstream = "south"\nsource = "b.mp4"\nthreadz = 2\n')
    err = refused(path)
    assert (err.file, err.line, err.key) == (str(path), 8, "pipelines.1.threadz")
    assert 'unknown key in pipelines[1] (stream "south")' in err.message
    assert "docs/config.md" in (err.fix or "")


def test_unknown_key_in_a_pipeline_motion_table(tmp_path: Path) -> None:
    path = write(tmp_path, '[[pipelines]]\nstream = "north"\nsource = "a.mp4"\n'
                           '[pipelines.motion]\nenabled = true\nevry_n = 2\n')
    err = refused(path)
    assert (err.line, err.key) == (6, "pipelines.0.motion.evry_n")
    assert 'pipelines[0] (stream "north")' in err.message


def test_bad_value_in_a_pipeline(tmp_path: Path) -> None:
    path = write(tmp_path, '[[pipelines]]\nstream = "n"\nsource = "a.mp4"\nthreads = 65\n')
    err = refused(path)
    assert (err.line, err.key) == (4, "pipelines.0.threads")
    assert 'pipelines[0] (stream "n")' in err.message and "64" in err.message
    err = refused(write(tmp_path, '[[pipelines]]\nstream = "a/b"\nsource = "a.mp4"\n'))
    assert (err.line, err.key) == (2, "pipelines.0.stream")
    err = refused(write(tmp_path, '[[pipelines]]\nstream = "n"\nsource = "ftp://x"\n'))
    assert (err.line, err.key) == (3, "pipelines.0.source") and "unknown source scheme" in err.message
    err = refused(write(tmp_path, '[[pipelines]]\nstream = "n"\n'))
    assert (err.line, err.key) == (1, "pipelines.0.source") and "Field required" in err.message


def test_pipelines_not_an_array_of_tables(tmp_path: Path) -> None:
    for text, line in [("pipelines = 5\n", 1), ('[pipelines]\nstream = "a"\n', 1)]:
        err = refused(write(tmp_path, text))
        assert (err.key, err.line) == ("pipelines", line)
        assert "[[pipelines]]" in (err.fix or "")


def test_threads_over_the_budget(tmp_path: Path) -> None:
    path = write(tmp_path, '[agent]\nthread_budget = 4\n[[pipelines]]\nstream = "a"\n'
                           'source = "a.mp4"\n[[pipelines]]\nstream = "south"\nsource = "b.mp4"\n'
                           'threads = 6\n')
    err = refused(path)
    assert (err.file, err.line, err.key) == (str(path), 9, "pipelines.1.threads")
    assert 'pipelines[1] (stream "south")' in err.message and "4" in err.message
    assert "thread_budget" in (err.fix or "")


@pytest.mark.parametrize("key", ["uri", "stream"])
def test_source_in_the_file_with_pipelines(tmp_path: Path, key: str) -> None:
    value = '"clip.mp4"' if key == "uri" else '"cam9"'
    path = write(tmp_path, f'[source]\npace = "fast"\n{key} = {value}\n'
                           '[[pipelines]]\nstream = "a"\nsource = "a.mp4"\n')
    err = refused(path)
    assert (err.file, err.line, err.key) == (str(path), 3, f"source.{key}")
    assert "[[pipelines]]" in err.message
    assert "put the source in a [[pipelines]] table, or drop [[pipelines]]" in (err.fix or "")


def test_source_flag_with_pipelines(tmp_path: Path) -> None:
    path = write(tmp_path, '[[pipelines]]\nstream = "a"\nsource = "a.mp4"\n')
    err = refused(path, overrides={"source": {"uri": "b.mp4"}})
    assert (err.file, err.key) == ("command line", "source.uri")
    assert str(path) in err.message
    # a board that names a camera is only a default: [[pipelines]] beside it is fine
    cfg = load_config(path, board="rpi4", overrides={"model": {"path": "m"}})
    assert [s.source for s in cfg.pipeline_specs()] == ["a.mp4"]


def test_attach_sensors_per_pipeline(tmp_path: Path) -> None:
    path = write(tmp_path, '[[sensors]]\nuri = "serial:///dev/ttyUSB0?protocol=csv&name=gps"\n'
                           '[[pipelines]]\nstream = "a"\nsource = "a.mp4"\nattach_sensors = ["gps"]\n'
                           '[[pipelines]]\nstream = "b"\nsource = "b.mp4"\nattach_sensors = ["imu"]\n')
    err = refused(path)
    assert (err.line, err.key) == (10, "pipelines.1.attach_sensors")
    assert 'pipelines[1] (stream "b")' in err.message and "imu" in err.message
    assert "gps" in err.message


def test_empty_pipelines(tmp_path: Path) -> None:
    path = write(tmp_path, 'pipelines = []\n[agent]\nsite = "s"\n')
    err = refused(path)
    assert (err.file, err.line, err.key) == (str(path), 1, "pipelines")
    assert "no pipeline" in err.message


def test_config_check_prints_one_line(tmp_path: Path) -> None:
    good = write(tmp_path, TWO, "good.toml")
    out = run_cli("config", "check", str(good))
    assert (out.returncode, out.stdout.splitlines()[0]) == (0, f"{good}: ok"), out.stderr
    bad = write(tmp_path, '[[pipelines]]\nstream = "a"\nsource = "v4l2:///dev/video0"\n'
                          '[[pipelines]]\nstream = "b"\nsource = "v4l2:///dev/video0"\n', "bad.toml")
    out = run_cli("config", "check", str(bad))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.splitlines() == [out.stderr.strip()]
    assert out.stderr.startswith(f"lepton-agent: error: {bad}:6 [pipelines.1.source]: "
                                 'pipelines[1] (stream "b")')


@pytest.mark.parametrize(("flag", "value"), [("--source", "b.mp4"), ("--stream", "cam9")])
def test_run_flags_name_the_flag(tmp_path: Path, flag: str, value: str) -> None:
    """`run`'s own flag parsing and config loading (agent.cli.common), in process: the error
    names the flag, not source.uri of a "command line" file."""
    from agent.cli import build_parser
    from agent.cli.common import load_config_from_args

    path = write(tmp_path, '[[pipelines]]\nstream = "a"\nsource = "a.mp4"\n')
    args = build_parser().parse_args(["run", "--config", str(path), "--offline", flag, value])
    with pytest.raises(ConfigError) as info:
        load_config_from_args(args)
    assert str(info.value).startswith(f"[{flag}]: source."), str(info.value)
    assert f"[[pipelines]] in {path}" in str(info.value)
    assert "put the source in a [[pipelines]] table, or drop [[pipelines]]" in str(info.value)
    args = build_parser().parse_args(["run", "--config", str(path), "--offline", "--max-frames",
                                      "3", "--threads", "1", "--model", "m2"])
    (spec,) = load_config_from_args(args).pipeline_specs()
    assert (spec.max_frames, spec.threads, spec.model) == (3, 1, Path("m2"))


@pytest.mark.parametrize("stream", ["north.events", "north.counts"])
def test_a_stream_named_like_another_streams_events_or_counts_is_refused(
        tmp_path: Path, stream: str) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[[pipelines]]\nstream = "{stream}"\nsource = "synthetic://64x48@5"\n')
    with pytest.raises(ConfigError, match="events or counts") as err:
        load_config(cfg)
    assert "pipelines" in str(err.value) and str(cfg.name) in str(err.value)
