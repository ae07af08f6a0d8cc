"""The pure core: backoff, topics, URIs, labels, the publish window. No event loop."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core.backoff import Backoff
from agent.core.contract.topics import DeviceTopics, parse_topic, results_subscription
from agent.core.labels import parse_labels
from agent.core.outbox import FetchUnsent, MarkSent, PublishWindow
from agent.core.uri import SensorUri, parse_broker, parse_sensor_uri, parse_source, redact_url


class TestBackoff:
    def test_grows_then_caps(self) -> None:
        b = Backoff(initial=1.0, maximum=8.0, jitter=0.0)
        assert [b.next_delay() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]

    def test_reset_starts_over(self) -> None:
        b = Backoff(initial=1.0, maximum=8.0, jitter=0.0)
        b.next_delay()
        b.next_delay()
        b.reset()
        assert b.next_delay() == 1.0

    @given(st.integers(0, 200), st.floats(0.0, 1.0))
    def test_jitter_stays_within_band(self, attempts: int, jitter: float) -> None:
        b = Backoff(initial=0.5, maximum=30.0, jitter=jitter, rng=random.Random(attempts))
        b.attempts = attempts
        cap = min(30.0, 0.5 * 2.0 ** min(attempts, 64))
        delay = b.next_delay()
        assert cap * (1 - jitter) - 1e-9 <= delay <= cap + 1e-9
        assert delay > 0

    def test_rejects_nonsense(self) -> None:
        with pytest.raises(ValueError):
            Backoff(initial=0)
        with pytest.raises(ValueError):
            Backoff(initial=2, maximum=1)


class TestTopics:
    def test_contract_names(self) -> None:
        t = DeviceTopics("plant-7", "cam-01")
        assert t.status == "lepton/v1/plant-7/cam-01/status"
        assert t.results("cam0") == "lepton/v1/plant-7/cam-01/results/cam0"
        assert results_subscription("ingest") == "$share/ingest/lepton/v1/+/+/results/+"
        assert results_subscription(None) == "lepton/v1/+/+/results/+"

    @pytest.mark.parametrize("bad", ["", "a/b", "a+b", "#", "x y", "z" * 65])
    def test_rejects_wildcards_and_slashes(self, bad: str) -> None:
        with pytest.raises(ValueError, match="not a valid topic segment"):
            DeviceTopics("site", bad)

    def test_parse_round_trip(self) -> None:
        p = parse_topic(DeviceTopics("s1", "d1").results("cam0"))
        assert (p.site, p.device, p.kind, p.stream) == ("s1", "d1", "results", "cam0")

    @pytest.mark.parametrize("bad", ["other/v1/s/d/results/x", "lepton/v2/s/d/results/x",
                                     "lepton/v1/s/d/results", "lepton/v1/s/d/results/a/b",
                                     "lepton/v1/s"])
    def test_parse_rejects(self, bad: str) -> None:
        with pytest.raises(ValueError):
            parse_topic(bad)


class TestUris:
    def test_sources(self) -> None:
        assert parse_source("synthetic://640x480@15").fps == 15.0
        s = parse_source("synthetic://320x240")
        assert (s.kind, s.width, s.height, s.fps) == ("synthetic", 320, 240, 15.0)
        assert parse_source("v4l2:///dev/video0").target == "/dev/video0"
        assert parse_source("rtsp://cam.local/stream").kind == "rtsp"
        assert parse_source("gst:videotestsrc ! appsink").target == "videotestsrc ! appsink"
        assert parse_source("clips/a.mp4").kind == "file"
        assert parse_source("file:///tmp/a.avi").target == "/tmp/a.avi"
        assert not parse_source("clips/a.mp4").is_live
        assert parse_source("v4l2:///dev/video0").is_live

    @pytest.mark.parametrize("bad", ["", "synthetic://axb", "synthetic://10x10@5",
                                     "synthetic://640x480@0", "gst:", "ftp://x/y", "v4l2://"])
    def test_bad_sources_say_what_is_accepted(self, bad: str) -> None:
        with pytest.raises(ValueError) as info:
            parse_source(bad)
        assert str(info.value)

    def test_brokers(self) -> None:
        b = parse_broker("mqtt://127.0.0.1:1884")
        assert (b.host, b.port, b.tls) == ("127.0.0.1", 1884, False)
        assert parse_broker("mqtts://broker.example").port == 8883
        assert parse_broker("mqtt://localhost").port == 1883

    @pytest.mark.parametrize("bad", ["tcp://x:1", "mqtt://", "mqtt://u:p@host:1883", "mqtt://h:99999"])
    def test_bad_brokers(self, bad: str) -> None:
        with pytest.raises(ValueError):
            parse_broker(bad)

    @given(user=st.text("abcdefghijklmnopqrstuvwxyz0123456789_-.", max_size=8),
           password=st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=24),
           scheme=st.sampled_from(["mqtt", "mqtts", "tcp"]),
           host=st.sampled_from(["host", "broker.example:8883", "10.0.0.1:1883", "[::1]", ""]))
    def test_a_refused_broker_url_never_shows_its_password(self, user: str, password: str,
                                                            scheme: str, host: str) -> None:
        def refusal(url: str) -> str:
            with pytest.raises(ValueError) as info:
                parse_broker(url)
            return str(info.value)

        url = f"{scheme}://{user}:{password}@{host}"
        assert redact_url(url) == f"{scheme}://{user}:***@{host}"
        # The message is the same whatever the password: nothing of it shows.
        assert refusal(url) == refusal(f"{scheme}://{user}:***@{host}")
        assert url not in refusal(url) and f"{user}:***@{host}" in refusal(url)


    def test_sensor_uri_known_answers(self) -> None:
        # Pure parsing now lives in core (config validates with it); exact values and messages.
        assert parse_sensor_uri("serial:///dev/ttyUSB0?baud=115200&protocol=csv&columns=ax,,ay") == \
            SensorUri("serial:///dev/ttyUSB0?baud=115200&protocol=csv&columns=ax,,ay",
                      "/dev/ttyUSB0", 115200, "csv", "ttyUSB0", ("ax", "ay"))
        assert parse_sensor_uri("serial:///dev/ttyS0?name=gps&name=imu") == \
            SensorUri("serial:///dev/ttyS0?name=gps&name=imu", "/dev/ttyS0", 9600, "nmea0183", "imu")
        for bad, message in [
            ("serial://", "sensor 'serial://': use serial:///dev/ttyUSB0?baud=9600&protocol=nmea0183"),
            ("serial:///dev/x?speed=1&a=2", "sensor 'serial:///dev/x?speed=1&a=2': unknown option(s) "
                                            "a, speed; known: baud, protocol, name, columns"),
            ("serial:///dev/x?baud=fast", "sensor 'serial:///dev/x?baud=fast': baud must be a number"),
            ("serial:///dev/x?baud=9601", "sensor 'serial:///dev/x?baud=9601': baud 9601 is not a "
                                          "standard rate"),
            ("serial:///dev/x?protocol=can", "sensor 'serial:///dev/x?protocol=can': unknown protocol "
                                             "'can'; known: binary, csv, jsonl, nmea0183"),
        ]:
            with pytest.raises(ValueError) as info:
                parse_sensor_uri(bad)
            assert str(info.value) == message

class TestLabels:
    def test_plain(self) -> None:
        assert parse_labels("background\ncat\n\ndog\n", pbtxt=False) == {0: "background", 1: "cat",
                                                                         3: "dog"}

    def test_pbtxt(self) -> None:
        text = 'item {\n  name: "sedan"\n  id: 1\n}\nitem { id: 2 name: "bus" display_name: "Bus" }'
        assert parse_labels(text, pbtxt=True) == {1: "sedan", 2: "Bus"}

    def test_pbtxt_empty(self) -> None:
        with pytest.raises(ValueError):
            parse_labels("nothing here", pbtxt=True)


class TestPublishWindow:
    def test_nothing_while_disconnected(self) -> None:
        w = PublishWindow(window=3)
        assert w.on_committed() == []

    def test_fill_publish_ack_cycle(self) -> None:
        w = PublishWindow(window=3)
        assert w.on_connected() == [FetchUnsent(after_id=0, limit=3)]
        for mid, rid in ((11, 1), (12, 2), (13, 3)):
            w.on_published(mid, rid)
        assert w.on_fetched([1, 2, 3], exhausted=False) == []
        assert w.on_committed() == []  # window full
        assert w.on_puback([12]) == [MarkSent((2,)), FetchUnsent(after_id=3, limit=1)]
        assert w.in_flight_count == 2

    def test_exhausted_waits_for_commit(self) -> None:
        w = PublishWindow(window=5)
        w.on_connected()
        w.on_published(1, 1)
        w.on_fetched([1], exhausted=True)
        assert w.on_puback([1]) == [MarkSent((1,))]
        assert w.on_committed() == [FetchUnsent(after_id=1, limit=5)]

    def test_disconnect_keeps_in_flight_and_cursor(self) -> None:
        w = PublishWindow(window=2)
        w.on_connected()
        w.on_published(7, 40)
        w.on_fetched([40], exhausted=True)
        w.on_disconnected()
        assert w.on_committed() == []
        # the client retransmits mid 7 itself after reconnecting: the cursor must not rewind
        assert w.on_connected() == [FetchUnsent(after_id=40, limit=1)]
        assert w.on_puback([7]) == [MarkSent((40,)), FetchUnsent(after_id=40, limit=2)]

    def test_unknown_and_rejected_acks(self) -> None:
        w = PublishWindow(window=2)
        w.on_connected()
        w.on_published(1, 10)
        w.on_fetched([10], exhausted=True)
        assert w.on_puback([99]) == []
        assert w.on_rejected([1]) == []
        assert w.in_flight_count == 0

    @given(st.lists(st.sampled_from(["commit", "connect", "disconnect", "ack"]), max_size=60))
    def test_window_never_overfills_and_marks_each_record_once(self, events: list[str]) -> None:
        sim = _WindowSim(PublishWindow(window=4))
        for event in events:
            sim.step(event)
            assert sim.w.in_flight_count <= 4
        assert len(sim.sent) == len(set(sim.sent))
        assert sim.sent == sorted(sim.sent)

    def test_live_commit_published_whole_needs_no_fetch(self) -> None:
        w = PublishWindow(window=4)
        w.on_connected()
        w.on_fetched([], exhausted=True)
        w.on_published(1, 1)
        w.on_published(2, 2)
        assert w.on_committed([1, 2], all_published=True) == []
        assert w.cursor == 2 and not w.has_unsent
        w.on_published(3, 3)  # 3 of 3..4 went out at once: 4 must be fetched
        assert w.on_committed([3], all_published=False) == [FetchUnsent(after_id=2, limit=1)]

    @given(st.lists(st.sampled_from(["commit", "live", "connect", "disconnect", "ack"]),
                    max_size=80))
    def test_live_first_publishes_each_record_once_and_loses_none(self, events: list[str]) -> None:
        """Records published at commit (live-first, up to a reserve beyond the window) and
        records fetched share one window: none goes twice, and once connected and acked,
        every committed record has been sent."""
        sim = _WindowSim(PublishWindow(window=3), reserve=2)
        for event in events:
            sim.step(event)
            assert sim.w.in_flight_count <= 3 + 2
        if not sim.w.connected:
            sim.run(sim.w.on_connected())
        for _ in range(4 * sim.committed + 4):
            if not sim.w.in_flight:
                break
            sim.run(sim.w.on_puback(list(sim.w.in_flight)))
        assert sorted(sim.sent) == list(range(1, sim.committed + 1))
        assert len(sim.sent) == len(set(sim.sent))


class _WindowSim:
    """A PublishWindow driven against an in-memory outbox of ids 1..committed: carries out
    its actions as the uplink does, and publishes "live" commits at once while there is room
    (``reserve`` beyond the window)."""

    def __init__(self, w: PublishWindow, reserve: int = 0) -> None:
        self.w, self.reserve = w, reserve
        self.committed, self.next_mid = 0, 1
        self.sent: list[int] = []
        self.published: set[int] = set()

    def publish(self, rid: int) -> None:
        assert rid not in self.published
        self.published.add(rid)
        self.w.on_published(self.next_mid, rid)
        self.next_mid += 1

    def run(self, actions: list) -> None:  # type: ignore[type-arg]
        for a in actions:
            if isinstance(a, MarkSent):
                self.sent.extend(a.record_ids)
            elif isinstance(a, FetchUnsent):
                ids = [i for i in range(a.after_id + 1, self.committed + 1)
                       if i not in self.sent and not self.w.is_in_flight(i)][: a.limit]
                for rid in ids:
                    self.publish(rid)
                self.run(self.w.on_fetched(ids, exhausted=len(ids) < a.limit))

    def step(self, event: str) -> None:
        w = self.w
        if event in ("commit", "live"):
            self.committed += 1
            done: list[int] = []
            if event == "live" and w.connected and w.in_flight_count < w.window + self.reserve:
                self.publish(self.committed)
                done.append(self.committed)
            self.run(w.on_committed(done, all_published=bool(done)))
        elif event == "connect":
            self.run(w.on_connected())
        elif event == "disconnect":
            self.run(w.on_disconnected())
        elif w.in_flight and w.connected:
            self.run(w.on_puback([min(w.in_flight)]))


class TestAcks:
    def test_ranges(self) -> None:
        from agent.core.contract.ack import to_ranges

        assert to_ranges([5, 1, 2, 3, 3, 9, 8]) == [(1, 3), (5, 5), (8, 9)]
        assert to_ranges([]) == []

    def test_round_trip_and_schema(self) -> None:
        import json

        from jsonschema import Draft202012Validator

        from agent.core.contract.ack import decode_ack, encode_ack
        from agent.schemas import load_schema

        payload = encode_ack({"cam0": [(1, 4), (7, 7)]}, ingest="i1")
        Draft202012Validator(load_schema("ack.v1")).validate(json.loads(payload))
        assert decode_ack(payload) == {"cam0": [(1, 4), (7, 7)]}

    @pytest.mark.parametrize("bad", [b"x", b"[]", b'{"schema": {"id": "lepton.ack", "version": 1}}',
                                     b'{"schema": {"id": "lepton.ack", "version": 1}, "streams": '
                                     b'{"c": [[3, 1]]}}',
                                     b'{"schema": {"id": "lepton.ack", "version": 1}, "streams": '
                                     b'{"c": [[true, 2]]}}'])
    def test_malformed(self, bad: bytes) -> None:
        from agent.core.contract.ack import decode_ack

        with pytest.raises(ValueError):
            decode_ack(bad)

    def test_acks_beyond_what_was_assigned_are_cut_and_counted(self) -> None:
        from agent.core.contract.ack import within_published

        kept, ignored = within_published(
            {"cam0": [(1, 4), (8, 2**62)], "ghost": [(1, 5)], "imu": [(30, 40)]},
            {"cam0": 10, "imu": 20})
        assert kept == {"cam0": [(1, 4), (8, 10)]}
        assert ignored == 3  # cam0 cut at 10, ghost never assigned, imu all beyond 20

    @given(acked=st.dictionaries(
               st.sampled_from(["cam0", "cam1", "imu", "ghost"]),
               st.lists(st.tuples(st.integers(1, 60), st.integers(0, 30)).map(
                   lambda t: (t[0], t[0] + t[1])), max_size=6), max_size=4),
           last=st.dictionaries(st.sampled_from(["cam0", "cam1", "imu"]), st.integers(0, 70)))
    def test_kept_seqs_are_exactly_those_acked_and_assigned(
            self, acked: dict[str, list[tuple[int, int]]], last: dict[str, int]) -> None:
        from agent.core.contract.ack import within_published

        def seqs(streams: dict[str, list[tuple[int, int]]]) -> set[tuple[str, int]]:
            return {(s, q) for s, ranges in streams.items() for lo, hi in ranges
                    for q in range(lo, hi + 1)}

        kept, ignored = within_published(acked, last)
        assigned = {(s, q) for s, n in last.items() for q in range(1, n + 1)}
        assert seqs(kept) == seqs(acked) & assigned  # nothing legitimate is lost
        assert all(lo <= hi for ranges in kept.values() for lo, hi in ranges)
        assert ignored == sum(1 for s, ranges in acked.items() for _, hi in ranges
                              if hi > last.get(s, 0))

    def test_requeue_rewinds_and_skips_in_flight(self) -> None:
        w = PublishWindow(window=4)
        w.on_connected()
        w.on_published(1, 10)
        w.on_fetched([10], exhausted=True)
        assert w.is_in_flight(10)
        assert w.on_requeued() == [FetchUnsent(after_id=0, limit=3)]
        w.on_puback([1])
        assert not w.is_in_flight(10)


class TestThermal:
    def test_steps_up_holds_and_recovers_with_hysteresis(self) -> None:
        from agent.core.thermal import ThermalGovernor, ThermalReading

        g = ThermalGovernor(max_temp_c=75, hysteresis_c=5, step_c=3, max_level=3)
        levels = [g.update(ThermalReading(t)) for t in
                  (60, 76, 77, 78.5, 82, 90, 90, 79, 77, 75, 72, 69, 60)]
        assert levels == [0, 1, 1, 2, 3, 3, 3, 3, 3, 2, 1, 0, 0]
        assert g.update(ThermalReading(50, throttled=True)) == 1  # throttling alone steps up
        assert g.update(ThermalReading(None)) == 0  # no sensor: recover

    def test_strides_spare_moving_frames_first(self) -> None:
        from agent.core.thermal import ThermalGovernor

        g = ThermalGovernor()
        g.level = 1
        assert (g.frame_stride(motion_gated=True), g.static_every_n_factor(True)) == (1, 4)
        assert g.frame_stride(motion_gated=False) == 2
        g.level = 3
        assert (g.frame_stride(True), g.frame_stride(False)) == (4, 8)


def test_sysfs_thermal_reader(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from agent.sources.thermal import SysfsThermal

    assert SysfsThermal(tmp_path).read().temp_c is None  # no sysfs: no reading, no crash
    for i, (kind, milli) in enumerate((("acpitz", "40000"), ("cpu-thermal", "71234"))):
        zone = tmp_path / "class" / "thermal" / f"thermal_zone{i}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(milli + "\n")
    flags = tmp_path / "devices/platform/soc/soc:firmware/get_throttled"
    flags.parent.mkdir(parents=True)
    flags.write_text("0x50005\n")
    reading = SysfsThermal(tmp_path).read()
    assert reading.temp_c == 71.234 and reading.throttled
