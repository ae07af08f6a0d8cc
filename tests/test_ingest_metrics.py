"""Ingest's Prometheus endpoint (issue 13: every reject reason counted in its log and metrics),
scraped from a real ingest process fed through a real mosquitto."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import pytest

from agent.devtools.mosquitto import LocalBroker, free_port
from tests.conftest import run_cli
from tests.ingest_support import RESULTS, IngestProcess, dumps, publish, result_body, wait_until


def scrape(port: int) -> dict[str, float]:
    """Every sample on /metrics, keyed by name and labels as Prometheus writes them."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        found = re.fullmatch(r"(lepton_ingest_\S+) (\S+)", line)
        if found:
            samples[found.group(1)] = float(found.group(2))
    return samples


@pytest.mark.broker
def test_ingest_metrics_count_stored_duplicates_and_each_reject_reason(
        tmp_path: Path, broker: LocalBroker) -> None:
    port = free_port()
    ingest = IngestProcess(broker.url, tmp_path / "i.db", "--metrics-listen", f"127.0.0.1:{port}")
    publish(broker.port, [(RESULTS, dumps(result_body(1))), (RESULTS, dumps(result_body(2))),
                          (RESULTS, dumps(result_body(2))),  # a redelivery
                          (RESULTS, b"\xff\xfe not utf-8"), (RESULTS, b"{\"seq\": "),
                          (RESULTS, b"[" * 5000 + b"]" * 5000)])
    wait_until(lambda: scrape(port).get("lepton_ingest_received_total") == 6, "6 received")
    samples = scrape(port)
    stats, _ = ingest.stop()
    assert samples["lepton_ingest_stored_total"] == 2 == stats["stored"]
    assert samples["lepton_ingest_duplicates_total"] == 1 == stats["duplicates"]
    by_reason = {k: v for k, v in samples.items() if k.startswith("lepton_ingest_rejected_total{")}
    assert sum(by_reason.values()) == 3 == stats["rejected"]
    assert by_reason == {f'lepton_ingest_rejected_total{{reason="{reason}"}}': float(count)
                         for reason, count in stats["rejects"].items()}
    assert len(by_reason) >= 2  # the reasons are told apart, not lumped together


def test_ingest_metrics_on_a_port_in_use_or_a_bad_address_is_one_line(
        tmp_path: Path, broker: LocalBroker) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = run_cli("ingest", "--broker", broker.url, "--db", f"sqlite:///{tmp_path}/i.db",
                      "--metrics-listen", f"127.0.0.1:{port}")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"127.0.0.1:{port}" in out.stderr and "in use" in out.stderr
    bad = run_cli("ingest", "--broker", broker.url, "--db", f"sqlite:///{tmp_path}/i.db",
                  "--metrics-listen", "9101")
    assert bad.returncode == 2 and "--metrics-listen" in bad.stderr and "HOST:PORT" in bad.stderr
