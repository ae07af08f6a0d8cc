"""`lepton-agent ingest`: the backend consumer, results from the broker into a database."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from agent.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``ingest`` and its flags to the subcommands."""
    ingest = sub.add_parser("ingest", help="backend consumer: results -> database")
    ingest.add_argument("--broker", required=True)
    ingest.add_argument("--db", required=True,
                        help="sqlite:////ABSOLUTE/PATH (four slashes), sqlite:///RELATIVE/PATH, "
                             "or postgresql://user@host:port/db[?schema=NAME]")
    ingest.add_argument("--reconnect-max", type=float, default=5.0, metavar="SECONDS",
                        help="longest wait between reconnect attempts to the broker")
    ingest.add_argument("--blob-dir", type=Path, default=None,
                        help="where finished shard blobs are written (default: blobs/ beside "
                             "the SQLite file, ./blobs for PostgreSQL)")
    ingest.add_argument("--group", default="ingest",
                        help="shared-subscription group ('' for a plain subscription)")
    ingest.add_argument("--client-id",
                        help="stable id, one per process: the broker keeps its session across "
                             "restarts (default: unique per process, session ends with it)")
    ingest.add_argument("--username")
    ingest.add_argument("--tls-ca", type=Path, metavar="FILE",
                        help="CA certificate (PEM) that signed the mqtts:// broker's")
    ingest.add_argument("--tls-cert", type=Path, metavar="FILE",
                        help="client certificate (PEM) for mutual TLS")
    ingest.add_argument("--tls-key", type=Path, metavar="FILE",
                        help="client key (PEM; default: $CREDENTIALS_DIRECTORY/tls-key)")
    ingest.add_argument("--stats-interval", type=float, default=60.0, metavar="SECONDS",
                        help="how often the counters (and reject reasons) are logged")
    ingest.add_argument("--metrics-listen", metavar="HOST:PORT", default="",
                        help="serve Prometheus metrics (counts, rejects by reason) here, "
                             "e.g. 127.0.0.1:9101 (default: off)")
    ingest.add_argument("--ready-file", type=Path,
                        help="written once the subscription is in place (for orchestration)")
    ingest.add_argument("--receive-maximum", type=int, default=1000, metavar="N",
                        help="MQTT 5 Receive Maximum: messages the broker may have in flight "
                             "to this process, unacknowledged (1-65535)")
    ingest.add_argument("--check", action="store_true",
                        help="only check that the broker and the database are reachable and "
                             "the schema is current (one line each; exit 1 if not)")
    ingest.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    ingest.set_defaults(func=cmd_ingest)


def cmd_ingest(args: argparse.Namespace) -> int:
    from agent.backend.ingest import TlsFiles, run_ingest
    from agent.backend.store import open_store
    from agent.config import Secrets
    from agent.core.uri import parse_broker
    from agent.service.logs import setup_logging

    setup_logging(args.log_level)
    try:
        broker = parse_broker(args.broker)
    except ValueError as exc:
        raise ConfigError(str(exc), key="--broker") from exc
    secrets = Secrets.from_environment()
    # The key as the agent takes it: a flag, else systemd's credential "tls-key".
    tls = TlsFiles(args.tls_ca, args.tls_cert,
                   args.tls_key or (secrets.tls_key_file if args.tls_cert else None))
    tls.check(broker)
    if not 1 <= args.receive_maximum <= 65535:
        raise ConfigError("must be 1-65535", key="--receive-maximum", fix="e.g. 1000")
    if args.stats_interval <= 0:
        raise ConfigError("must be above 0", key="--stats-interval", fix="e.g. 60")
    metrics_listen = None
    if args.metrics_listen:
        from agent.backend.metrics import parse_listen
        from agent.core.uri import is_loopback

        metrics_listen = parse_listen(args.metrics_listen)
        if not is_loopback(metrics_listen[0]):
            print(f"ingest: warning: --metrics-listen {args.metrics_listen}: the endpoint has no "
                  "authentication; keep it on loopback or behind a firewall", file=sys.stderr)
    if args.check:
        from agent.backend.ingest import check_broker
        from agent.backend.store import check_store

        checks = [check_broker(broker, username=args.username, password=secrets.mqtt_password,
                               tls=tls), check_store(args.db)]
        for ok, line in checks:
            print(f"{'ok  ' if ok else 'FAIL'} {line}")
        return 0 if all(ok for ok, _ in checks) else 1
    store = open_store(args.db, args.blob_dir)
    print(f"ingest: storing into {store.describe()}", file=sys.stderr, flush=True)
    try:
        stats = asyncio.run(run_ingest(broker, store, group=args.group or None,
                                       client_id=args.client_id,
                                       password=secrets.mqtt_password,
                                       username=args.username, ready_file=args.ready_file,
                                       reconnect_max_s=args.reconnect_max, tls=tls,
                                       stats_interval_s=args.stats_interval,
                                       metrics_listen=metrics_listen,
                                       receive_maximum=args.receive_maximum))
    finally:
        store.close()
    print(json.dumps(stats.to_json()))
    return 0
