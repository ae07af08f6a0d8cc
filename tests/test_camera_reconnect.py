"""Camera reconnect against a real source that goes away: an HTTP MJPEG server the test starts,
stops and starts again on the same port, read by a real agent through OpenCV's FFmpeg backend."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import DEFAULT_MODEL
from tests.e2e import AgentProcess
from tests.mjpeg_camera import MjpegCamera


def test_agent_reconnects_to_a_camera_that_goes_away_and_comes_back(tmp_path: Path) -> None:
    camera = MjpegCamera().start()
    url = camera.url
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[agent]
state_dir = "{tmp_path / 'state'}"
shutdown_grace_s = 2
[model]
path = "{DEFAULT_MODEL}"
num_threads = 1
[source]
uri = "{url}"
reconnect_initial_s = 0.2
reconnect_max_s = 0.5
[mqtt]
broker = ""
""")
    agent = AgentProcess(config)
    try:
        up = agent.wait_status(lambda s: s["stages"]["inference"]["frames"] >= 10,
                               "frames from the camera", timeout=120)
        assert up["stages"]["capture"]["reconnects"] == 0
        assert up["stages"]["capture"]["source"] == url

        camera.stop()
        # The stream breaks (a failed read: one reconnect), then reopening fails while the
        # camera is away, and the capture thread keeps trying instead of ending.
        away = agent.wait_status(
            lambda s: s["stages"]["capture"]["reconnects"] >= 1
            and "cannot open" in (s["stages"]["capture"]["last_error"] or ""),
            "the agent to notice the camera is gone and fail to reopen it")
        assert away["state"] == "running" and away["stages"]["capture"]["alive"]
        lost = agent.wait_status(lambda s: s["last_error"] is not None, "the error reported")
        assert url in lost["last_error"]
        frames_while_away = away["stages"]["capture"]["frames"]
        reconnects = away["stages"]["capture"]["reconnects"]

        camera.start()  # the same port: the camera is back
        back = agent.wait_status(
            lambda s: s["stages"]["capture"]["frames"] >= frames_while_away + 10
            and s["stages"]["inference"]["frames"] > up["stages"]["inference"]["frames"] + 10,
            "frames to resume after the camera came back")
        assert back["stages"]["capture"]["alive"]
        assert back["stages"]["capture"]["reconnects"] == reconnects  # reopened, not lost again

        summary = agent.stop()
        assert summary["frames_captured"] >= back["stages"]["capture"]["frames"]
        assert summary["error"] is None
    finally:
        agent.kill()
        camera.stop()
