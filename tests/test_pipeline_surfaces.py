"""Every pipeline's state where an operator looks (issue 15): the status socket, `lepton-agent
status`, the Prometheus endpoint and `lepton-agent diag`, on a real agent running two
[[pipelines]]: one healthy, one whose model file does not exist (the agent runs on)."""

from __future__ import annotations

import json
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from agent.devtools.mosquitto import free_port
from tests.conftest import DEFAULT_MODEL, run_cli
from tests.e2e import AgentProcess, wait_for

MISSING = "/nonexistent/model.tflite"


def two_pipelines(tmp_path: Path, metrics_port: int = 0) -> Path:
    """An offline agent with a healthy pipeline ``good`` and a pipeline ``broken`` whose model
    file does not exist."""
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[agent]
state_dir = "{tmp_path / 'state'}"
shutdown_grace_s = 1
[model]
path = "{DEFAULT_MODEL}"
num_threads = 1
[mqtt]
broker = ""
[metrics]
prometheus_port = {metrics_port}
[[pipelines]]
stream = "good"
source = "synthetic://160x120@20"
[[pipelines]]
stream = "broken"
source = "synthetic://160x120@20"
model = "{MISSING}"
""")
    return config


def samples(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample on /metrics keyed by (name, labels), read by prometheus_client's parser."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def by_stream(snap: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["stream"]: p for p in snap["pipelines"]}


def test_a_failed_pipeline_shows_everywhere_while_the_other_runs(tmp_path: Path) -> None:
    port = free_port()
    config = two_pipelines(tmp_path, port)
    agent = AgentProcess(config)
    snap = agent.wait_status(
        lambda s: by_stream(s).get("good", {}).get("inference", {}).get("frames", 0) > 10
        and by_stream(s).get("broken", {}).get("state") == "failed",
        "the good pipeline processing frames and the broken one failed", timeout=60)

    # The status socket: one running with frames, one failed naming the missing model.
    good, broken = by_stream(snap)["good"], by_stream(snap)["broken"]
    assert good["state"] == "running" and good["reason"] is None
    assert good["capture"]["frames"] > 10 and good["fps"] > 0
    assert broken["state"] == "failed" and MISSING in broken["reason"]
    assert "does not exist" in broken["reason"]
    assert broken["inference"]["frames"] == 0
    assert agent.running  # one failed pipeline does not end the run

    # `lepton-agent status`: both pipelines, the failed one with its reason and its fix.
    out = run_cli("status", "--config", str(config), timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    good_line = next(line for line in lines if line.strip().startswith("pipeline good:"))
    broken_line = next(line for line in lines if line.strip().startswith("pipeline broken:"))
    assert "running" in good_line and "fps" in good_line and "processed" in good_line
    assert "dropped" in good_line and "lepton-vehicles-tiny" in good_line
    assert "synthetic://160x120@20" in good_line
    assert "FAILED" in broken_line and MISSING in broken_line and "does not exist" in broken_line
    assert "(fix:" not in broken_line  # the fix has its own line, not the raw error text
    fix_line = lines[lines.index(broken_line) + 1]
    assert fix_line.strip().startswith("fix:") and "--model" in fix_line
    assert "Traceback" not in out.stdout + out.stderr

    # `--json` passes the socket's snapshot through: pipelines and all.
    raw = run_cli("status", "--config", str(config), "--json", timeout=30)
    assert raw.returncode == 0, raw.stderr
    assert {p["stream"]: p["state"] for p in json.loads(raw.stdout)["pipelines"]} == \
        {"good": "running", "broken": "failed"}

    # Prometheus: per-stream series for both, the aggregate ones unchanged.
    def scraped() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
        found = samples(port)
        key = ("lepton_pipeline_frames_processed_total", frozenset({("stream", "good")}))
        return found if found.get(key, 0) > 0 else None

    metrics = wait_for(scraped, "per-stream metrics with frames processed", timeout=30)

    def state(stream: str, value: str) -> float:
        return metrics[("lepton_pipeline_state",
                        frozenset({("stream", stream), ("state", value)}))]

    assert state("good", "running") == 1 and state("good", "failed") == 0
    assert state("broken", "failed") == 1 and state("broken", "running") == 0
    for stream in ("good", "broken"):
        labels = frozenset({("stream", stream)})
        for name in ("lepton_pipeline_frames_captured_total",
                     "lepton_pipeline_frames_processed_total",
                     "lepton_pipeline_frames_dropped_total", "lepton_pipeline_detections_total",
                     "lepton_pipeline_inference_failures_total", "lepton_pipeline_inference_fps"):
            assert (name, labels) in metrics, (name, stream)
    assert metrics[("lepton_pipeline_frames_processed_total",
                    frozenset({("stream", "broken")}))] == 0
    assert metrics[("lepton_pipeline_inference_fps", frozenset({("stream", "good")}))] > 0
    info = [labels for (name, labels) in metrics if name == "lepton_pipeline_info"]
    assert frozenset({("stream", "broken"), ("model", MISSING), ("model_sha256", ""),
                      ("source", "synthetic://160x120@20")}) in info
    sha = next(dict(labels)["model_sha256"] for labels in info
               if ("stream", "good") in labels)
    assert sha == by_stream(snap)["good"]["model_sha256"] and len(sha) == 64
    assert ("lepton_frames_processed_total", frozenset()) in metrics  # the aggregate series

    # diag: the failed pipeline, its reason and what to do.
    diag = run_cli("diag", "pipelines", "--config", str(config), "--json", timeout=60)
    assert diag.returncode == 2, diag.stdout + diag.stderr
    check = next(c for c in json.loads(diag.stdout)["checks"] if c["name"] == "pipelines")
    assert check["status"] == "fail"
    assert "broken" in check["reason"] and MISSING in check["reason"]
    assert "good" not in check["reason"]  # only what is wrong
    assert "--model" in check["fix"] and "(fix:" not in check["reason"]
    assert check["details"]["live"] is True
    assert {p["stream"]: p["state"] for p in check["details"]["pipelines"]} == \
        {"good": "running", "broken": "failed"}
    text = run_cli("diag", "pipelines", "--config", str(config), timeout=60)
    assert "[FAIL] pipelines: " in text.stdout and "fix: " in text.stdout

    # The support bundle's status.json carries the pipelines.
    bundle = tmp_path / "bundle.tar.gz"
    made = run_cli("diag", "bundle", "--config", str(config), "--output", str(bundle),
                   "--timeout", "10", timeout=120)
    assert made.returncode == 0, made.stdout + made.stderr
    with tarfile.open(bundle) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/status.json"))
        status_json = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
    assert {p["stream"]: p["state"] for p in status_json["pipelines"]} == \
        {"good": "running", "broken": "failed"}
    assert agent.running
    agent.stop()


def test_diag_without_a_running_agent_loads_each_pipelines_model(tmp_path: Path) -> None:
    """No agent answers: the check loads each pipeline's model, as the agent would at start."""
    config = two_pipelines(tmp_path)
    diag = run_cli("diag", "pipelines", "--config", str(config), "--json", timeout=60)
    assert diag.returncode == 2, diag.stdout + diag.stderr
    check = next(c for c in json.loads(diag.stdout)["checks"] if c["name"] == "pipelines")
    assert check["status"] == "fail" and check["details"]["live"] is False
    assert "broken" in check["reason"] and MISSING in check["reason"]
    assert "good" not in check["reason"]
    assert "--model" in check["fix"]
    assert {p["stream"]: p["state"] for p in check["details"]["pipelines"]} == \
        {"good": "loads", "broken": "failed"}


def test_diag_passes_when_every_pipeline_loads(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(two_pipelines(tmp_path).read_text().replace(f'model = "{MISSING}"', ""))
    diag = run_cli("diag", "pipelines", "--config", str(config), "--json", timeout=60)
    check = next(c for c in json.loads(diag.stdout)["checks"] if c["name"] == "pipelines")
    assert check["status"] == "pass", check
    assert "good" in check["reason"] and "broken" in check["reason"]
    assert diag.returncode == 0
