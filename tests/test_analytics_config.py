"""Lines, zones, detection interval and [analytics] in the config, through the real loader.

Geometry is validated by the core (``LineRule.of`` / ``ZoneRule.of``); each problem is one
ConfigError naming the pipeline (index and stream), the key path, the file and line, and a fix."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import AnalyticsSpec, PipelineSection, load_config
from agent.config.schema import ANCHORS, LineSection, TrackerSection, ZoneSection
from agent.core.analytics import Anchor, LineRule, TrackerConfig, ZoneRule
from agent.errors import ConfigError
from tests.conftest import run_cli

TRAFFIC = '''[analytics]
interval = 2
bucket_s = 300
label_settle_s = 1.5
[analytics.tracker]
min_hits = 2
max_age_s = 1.5

[[pipelines]]
stream = "north"
source = "rtsp://10.0.0.21/stream1"

[[pipelines.lines]]
name = "stop-bar"
points = [[0.05, 0.62], [0.95, 0.58]]
classes = ["car", "truck"]

[[pipelines.zones]]
name = "box"
points = [[0.3, 0.4], [0.7, 0.4], [0.7, 0.9], [0.3, 0.9]]
anchor = "center"
band = 0.02
loiter_s = 30
max_occupancy = 4

[[pipelines]]
stream = "south"
source = "rtsp://10.0.0.22/stream1"
interval = 3

[[pipelines]]
stream = "east"
source = "rtsp://10.0.0.23/stream1"
interval = 1
[[pipelines.lines]]
name = "kerb"
points = [[0.0, 0.5], [1.0, 0.5]]
'''


def write(tmp_path: Path, text: str, name: str = "agent.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def refused(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "\n" not in str(info.value)
    assert info.value.fix, str(info.value)
    assert info.value.file == str(path)
    return info.value


def test_pipelines_with_nested_lines_and_zones(tmp_path: Path) -> None:
    north, south, east = load_config(write(tmp_path, TRAFFIC)).pipeline_specs()
    tracker = TrackerConfig(min_hits=2, max_age_s=1.5)
    assert north.interval == 2 and south.interval == 3 and east.interval == 1
    # the detector-rate floor applies where a tracker runs (south has no lines or zones)
    assert (north.min_detector_hz, south.min_detector_hz, east.min_detector_hz) == (5.0, 0.0, 5.0)
    assert north.analytics == AnalyticsSpec(
        lines=(LineRule.of("stop-bar", [[0.05, 0.62], [0.95, 0.58]], classes=["car", "truck"]),),
        zones=(ZoneRule.of("box", [[0.3, 0.4], [0.7, 0.4], [0.7, 0.9], [0.3, 0.9]],
                           anchor=Anchor.CENTER, band=0.02, loiter_s=30.0, max_occupancy=4),),
        tracker=tracker, bucket_s=300.0, label_settle_s=1.5)
    assert south.analytics is None  # no lines, no zones: no tracker
    assert east.analytics is not None and east.analytics.zones == ()
    assert east.analytics.lines[0].line.p1 == (0.0, 0.5)
    assert east.analytics.lines[0].classes is None
    assert east.analytics.lines[0].anchor is Anchor.BOTTOM_CENTER
    assert east.analytics.lines[0].band == 0.01


def test_the_spec_builds_the_core_engine(tmp_path: Path) -> None:
    from agent.core.analytics import Analytics

    (north, *_) = load_config(write(tmp_path, TRAFFIC)).pipeline_specs()
    spec = north.analytics
    assert spec is not None
    engine = Analytics(lines=spec.lines, zones=spec.zones, tracker=spec.tracker,
                       bucket_seconds=spec.bucket_s, label_settle_s=spec.label_settle_s,
                       wall_now=0.0, mono_now=0.0)
    assert [c.rule.name for c in engine.lines] == ["stop-bar"]
    assert engine.buckets.seconds == 300.0


def test_single_pipeline_takes_top_level_lines_and_zones(tmp_path: Path) -> None:
    path = write(tmp_path, '[source]\nuri = "clip.mp4"\nstream = "gate"\n'
                           '[analytics]\ninterval = 3\n'
                           '[[lines]]\nname = "l1"\npoints = [[0.1, 0.5], [0.9, 0.5]]\n'
                           'classes = ["car"]\nanchor = "top-center"\n'
                           '[[zones]]\nname = "z1"\npoints = [[0.1, 0.1], [0.5, 0.1], [0.3, 0.4]]\n')
    cfg = load_config(path)
    (spec,) = cfg.pipeline_specs()
    assert (spec.stream, spec.interval) == ("gate", 3)
    assert spec.analytics == AnalyticsSpec(
        lines=(LineRule.of("l1", [[0.1, 0.5], [0.9, 0.5]], classes=["car"], anchor=Anchor.TOP_CENTER),),
        zones=(ZoneRule.of("z1", [[0.1, 0.1], [0.5, 0.1], [0.3, 0.4]]),),
        tracker=TrackerConfig(), bucket_s=60.0, label_settle_s=2.0)
    # config check -v shows them; the dump validates back to the same pipelines
    dumped = cfg.model_dump(mode="json")
    assert [r["name"] for r in dumped["lines"]] == ["l1"]
    from agent.config import AgentConfig
    assert AgentConfig.model_validate(dumped).pipeline_specs() == cfg.pipeline_specs()


def test_defaults_without_analytics(tmp_path: Path) -> None:
    (spec,) = load_config().pipeline_specs()
    assert (spec.interval, spec.analytics) == (1, None)
    cfg = load_config(write(tmp_path, '[analytics]\ninterval = 4\n[[pipelines]]\nstream = "a"\n'
                                      'source = "a.mp4"\n[[pipelines]]\nstream = "b"\n'
                                      'source = "b.mp4"\ninterval = 2\n'))
    assert [s.interval for s in cfg.pipeline_specs()] == [4, 2]


def test_min_detector_hz_is_read_and_bounded(tmp_path: Path) -> None:
    lines = '[[lines]]\nname = "l"\npoints = [[0.1, 0.5], [0.9, 0.5]]\n'
    (spec,) = load_config(write(tmp_path, f'[analytics]\nmin_detector_hz = 0\n{lines}')).pipeline_specs()
    assert spec.min_detector_hz == 0.0
    with pytest.raises(ConfigError, match=r"analytics\.min_detector_hz"):
        load_config(write(tmp_path, f'[analytics]\nmin_detector_hz = -1\n{lines}'))


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 1000), st.floats(0.0, 240.0), st.floats(0.0, 60.0))
def test_detector_interval_is_the_largest_that_keeps_the_rate(interval: int, fps: float,
                                                              min_hz: float) -> None:
    from agent.core.analytics import detector_interval

    got = detector_interval(interval, fps, min_hz)
    if fps == 0.0 or min_hz == 0.0:
        assert got == interval
        return
    assert 1 <= got <= interval
    # the detector keeps the rate (unless even every frame is slower), and one more would not
    assert got == 1 or fps / got >= min_hz * (1 - 1e-9)
    assert got == interval or fps / (got + 1) < min_hz


def test_resolve_pipeline_accepts_lines_and_zones(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, TRAFFIC))
    spec = cfg.resolve_pipeline(PipelineSection(
        stream="west", source="rtsp://h/w", interval=5,
        lines=[LineSection(name="a", points=[[0.0, 0.2], [1.0, 0.2]])],
        zones=[ZoneSection(name="b", points=[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])]))
    assert spec.interval == 5 and spec.analytics is not None
    assert [r.name for r in spec.analytics.lines] == ["a"]
    assert spec.analytics.tracker == TrackerConfig(min_hits=2, max_age_s=1.5)
    with pytest.raises(ConfigError) as info:
        cfg.resolve_pipeline(PipelineSection(
            stream="west", source="rtsp://h/w",
            zones=[ZoneSection(name="b", points=[[0.0, 0.0], [1.0, 0.0]])]))
    assert info.value.key == "pipelines.3.zones.0.points"
    assert 'pipelines[3] (stream "west")' in info.value.message and "at least 3" in info.value.message


def test_schema_mirrors_the_core() -> None:
    assert set(ANCHORS) == {a.value for a in Anchor}
    assert set(TrackerSection.model_fields) == {f.name for f in dataclasses.fields(TrackerConfig)}


# -- bad input ------------------------------------------------------------------------------------

ONE = '[[pipelines]]\nstream = "a"\nsource = "a.mp4"\n[[pipelines]]\nstream = "south"\nsource = "b.mp4"\n'
# line 7 is the first key of the rule table below
CASES = [
    ("[[pipelines.lines]]\nname = \"l\"\npoints = [[0.1, 0.5], [1.2, 0.5]]\n",
     "pipelines.1.lines.0.points", 9, "outside [0, 1]"),
    ("[[pipelines.zones]]\nname = \"z\"\npoints = [[0.1, 0.1], [0.5, 0.1]]\n",
     "pipelines.1.zones.0.points", 9, "at least 3 points"),
    ("[[pipelines.zones]]\nname = \"z\"\npoints = [[0.1, 0.1], [0.9, 0.9], [0.9, 0.1], [0.1, 0.9]]\n",
     "pipelines.1.zones.0.points", 9, "self-intersecting"),
    ("[[pipelines.lines]]\nname = \"l\"\npoints = [[0.3, 0.3], [0.3, 0.3]]\n",
     "pipelines.1.lines.0.points", 9, "two distinct points"),
    ("[[pipelines.lines]]\nname = \"l\"\npoints = [[0.1, 0.5], [0.9, 0.5], [0.5, 0.9]]\n",
     "pipelines.1.lines.0.points", 9, "exactly 2 points"),
    ("[[pipelines.lines]]\nname = \"l\"\npoints = [[0.1, 0.5], [0.9, 0.5]]\nband = 0.7\n",
     "pipelines.1.lines.0.band", 10, "band = 0.7"),
    ("[[pipelines.zones]]\nname = \"z\"\npoints = [[0.1, 0.1], [0.5, 0.1], [0.3, 0.4]]\nloiter_s = 0\n",
     "pipelines.1.zones.0.loiter_s", 10, "loiter_s"),
    ("[[pipelines.lines]]\nname = \"same\"\npoints = [[0.1, 0.5], [0.9, 0.5]]\n"
     "[[pipelines.zones]]\nname = \"same\"\npoints = [[0.1, 0.1], [0.5, 0.1], [0.3, 0.4]]\n",
     "pipelines.1.zones.0.name", 11, "lines[0]"),
    ("[[pipelines.lines]]\nname = \"l\"\npoints = [[0.1, 0.5], [0.9, 0.5]]\nclasez = [\"car\"]\n",
     "pipelines.1.lines.0.clasez", 10, "unknown key"),
    ("[[pipelines.lines]]\nname = \"l\"\npoints = [[0.1, 0.5], [0.9, 0.5]]\nanchor = \"bottom\"\n",
     "pipelines.1.lines.0.anchor", 10, "bottom-center"),
    ("[[pipelines.lines]]\nname = \"l\"\npoints = [[0.1, 0.5], [0.9, 0.5]]\nclasses = []\n",
     "pipelines.1.lines.0.classes", 10, "counts nothing"),
    ("[[pipelines.lines]]\nname = \"a b\"\npoints = [[0.1, 0.5], [0.9, 0.5]]\n",
     "pipelines.1.lines.0.name", 8, "rule name"),
    ("[[pipelines.lines]]\nname = \"l\"\npoints = [[0.1, \"x\"], [0.9, 0.5]]\n",
     "pipelines.1.lines.0.points.0.1", 9, "valid number"),
    ("interval = 0\n", "pipelines.1.interval", 7, "greater than or equal to 1"),
]


@pytest.mark.parametrize(("tail", "key", "line", "expect"), CASES)
def test_bad_rule_names_pipeline_key_line_and_fix(tmp_path: Path, tail: str, key: str, line: int,
                                                  expect: str) -> None:
    err = refused(write(tmp_path, ONE + tail))
    assert (err.key, err.line) == (key, line), str(err)
    assert 'pipelines[1] (stream "south")' in err.message, str(err)
    assert expect in str(err), str(err)


def test_second_rule_table_of_the_second_pipeline(tmp_path: Path) -> None:
    """The line number is the n-th [[pipelines.zones]] of that pipeline, not of the file."""
    text = ('[[pipelines]]\nstream = "a"\nsource = "a.mp4"\n'
            '[[pipelines.zones]]\nname = "z"\npoints = [[0.1, 0.1], [0.5, 0.1], [0.3, 0.4]]\n'
            '[[pipelines]]\nstream = "b"\nsource = "b.mp4"\n'
            '[[pipelines.zones]]\nname = "z"\npoints = [[0.1, 0.1], [0.5, 0.1], [0.3, 0.4]]\n'
            '[[pipelines.zones]]\nname = "y"\npoints = [[0.1, 0.1], [0.5, 0.1], [1.3, 0.4]]\n')
    err = refused(write(tmp_path, text))
    assert (err.key, err.line) == ("pipelines.1.zones.1.points", 15)
    assert 'pipelines[1] (stream "b")' in err.message and "point 2 x = 1.3" in err.message


def test_top_level_rules_of_the_single_pipeline(tmp_path: Path) -> None:
    path = write(tmp_path, '[source]\nstream = "gate"\n[[zones]]\nname = "z"\n'
                           'points = [[0.1, 0.1], [0.9, 0.9], [0.9, 0.1], [0.1, 0.9]]\n')
    err = refused(path)
    assert (err.key, err.line) == ("zones.0.points", 5)
    assert 'stream "gate"' in err.message and "self-intersecting" in err.message
    err = refused(write(tmp_path, '[[lines]]\nname = "l"\npoints = [[0.1, 0.5], [0.9, 0.5]]\nx = 1\n'))
    assert (err.key, err.line) == ("lines.0.x", 4) and "unknown key" in err.message


def test_top_level_rules_beside_pipelines(tmp_path: Path) -> None:
    path = write(tmp_path, '[[pipelines]]\nstream = "a"\nsource = "a.mp4"\n\n'
                           '[[lines]]\nname = "l"\npoints = [[0.1, 0.5], [0.9, 0.5]]\n')
    err = refused(path)
    assert (err.key, err.line) == ("lines", 5)
    assert "[[lines]]" in err.message and "[[pipelines]]" in err.message
    assert "[[pipelines.lines]]" in (err.fix or "")
    # beside [[pipelines]] is the problem even when the table itself is also wrong
    err = refused(write(tmp_path, '[[zones]]\nname = "z"\npoints = [[0.1, 2.0]]\n'
                                  '[[pipelines]]\nstream = "a"\nsource = "a.mp4"\n'))
    assert (err.key, err.line) == ("zones", 1) and "[[pipelines.zones]]" in (err.fix or "")


@pytest.mark.parametrize(("text", "key", "line", "expect"), [
    ("[analytics.tracker]\nmin_hits = 0\n", "analytics.tracker.min_hits", 2, "at least 1"),
    ("[analytics.tracker]\nhigh_score = 0.9\nlow_score = 0.95\n", "analytics.tracker.low_score", 3,
     "low_score"),
    ("[analytics.tracker]\nmin_hitz = 2\n", "analytics.tracker.min_hitz", 2, "unknown key"),
    ("[analytics.tracker]\nmax_age_s = true\n", "analytics.tracker.max_age_s", 2, "not true"),
    ("[analytics]\nbucket_s = 7\n", "analytics.bucket_s", 2, "86400"),
    ("[analytics]\nbucket_s = 60.0\n", "analytics.bucket_s", 2, "valid integer"),
    ("[analytics]\ninterval = 1001\n", "analytics.interval", 2, "1000"),
])
def test_bad_analytics_section(tmp_path: Path, text: str, key: str, line: int, expect: str) -> None:
    err = refused(write(tmp_path, text))
    assert (err.key, err.line) == (key, line), str(err)
    assert expect in str(err), str(err)


def test_config_check_prints_one_line(tmp_path: Path) -> None:
    good = write(tmp_path, TRAFFIC, "good.toml")
    out = run_cli("config", "check", str(good))
    assert (out.returncode, out.stdout.splitlines()[0]) == (0, f"{good}: ok"), out.stderr
    bad = write(tmp_path, ONE + CASES[2][0], "bad.toml")
    out = run_cli("config", "check", str(bad))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.splitlines() == [out.stderr.strip()]
    assert out.stderr.startswith(f"lepton-agent: error: {bad}:9 [pipelines.1.zones.0.points]: "
                                 'pipelines[1] (stream "south")'), out.stderr
    assert "fix:" in out.stderr


def test_docs_name_every_rule_and_tracker_key() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()
    missing = [f"`analytics.tracker.{k}`" for k in TrackerSection.model_fields
               if f"`analytics.tracker.{k}`" not in doc]
    missing += [f"`[[lines]] {k}`" for k in LineSection.model_fields if f"`[[lines]] {k}`" not in doc]
    missing += [f"`[[zones]] {k}`" for k in ZoneSection.model_fields if f"`[[zones]] {k}`" not in doc]
    missing += [f"`[[pipelines]] {k}`" for k in ("interval", "lines", "zones")
                if f"`[[pipelines]] {k}`" not in doc]
    assert not missing, missing
    example = doc.split("## Lines and zones")[1].split("```toml\n")[1].split("```")[0]
    import tomllib

    from agent.config.schema import AgentConfig
    (spec,) = AgentConfig.model_validate(tomllib.loads(example)).pipeline_specs()
    assert spec.analytics is not None and spec.interval == 3
    assert [r.name for r in spec.analytics.lines + spec.analytics.zones] == ["stop-bar", "junction-box"]  # type: ignore[operator]
