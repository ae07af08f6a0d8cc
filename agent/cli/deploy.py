"""`lepton-agent deploy BUNDLE --devices D1,D2|--site S ...` and `lepton-agent deploy status`:
a model rollout over the fleet (issue 18 item 2), its state in the ingest database.

The bundle goes to the first ``--canary`` devices alone, then in batches of ``--batch``; the
rollout stops (the rest ``skipped``) once more than ``--max-failures`` devices did not succeed.
Each device's outcome (``succeeded``, ``rolled_back`` with the health gate's reason,
``rejected`` with the signature check's...) is kept per device. See docs/ota.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from agent.cli.common import positive
from agent.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``deploy`` (a rollout, or ``deploy status [ID]``)."""
    p = sub.add_parser("deploy", help="roll a signed model bundle out to devices; "
                                      "`deploy status` shows rollouts, `deploy resume ID` "
                                      "continues one whose sender stopped")
    p.add_argument("target", metavar="BUNDLE|status|resume",
                   help="a signed bundle folder, `status` to read rollouts, or `resume` to "
                        "continue one")
    p.add_argument("rollout", nargs="?", metavar="ID",
                   help="with status: one rollout; with resume: the rollout to continue")
    p.add_argument("--db", required=True, help="the ingest database (SQLite path or "
                                               "postgresql:// URL) that keeps rollouts")
    p.add_argument("--broker", help="mqtt://host:port or mqtts://host:port (a rollout)")
    p.add_argument("--devices", help="comma-separated device ids")
    p.add_argument("--site", help="the devices' site; without --devices: every device of "
                                  "the site the ingest database has seen")
    p.add_argument("--canary", type=positive(int, zero=True), default=1,
                   help="devices deployed to alone first (default 1)")
    p.add_argument("--batch", type=positive(int), default=10, help="devices per batch after")
    p.add_argument("--max-failures", type=positive(int, zero=True), default=0,
                   help="failed devices tolerated before the rollout stops (default 0)")
    p.add_argument("--id", dest="rollout_id", help="the rollout's id (default: generated); "
                   "an existing rollout of the same bundle is resumed")
    p.add_argument("--health-s", type=positive(float, zero=True), default=None,
                   help="each device's health watch after the switch (default: the "
                        "device's [ota] health_s)")
    p.add_argument("--min-fps-ratio", type=float, default=None,
                   help="health gate: fps at least this share of the previous model's "
                        "(default: the device's [ota] min_fps_ratio)")
    p.add_argument("--timeout", type=positive(float), default=900.0,
                   help="seconds per device for the whole deployment")
    p.add_argument("--username")
    p.add_argument("--ca", type=Path)
    p.add_argument("--cert", type=Path)
    p.add_argument("--key", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_deploy)


def _devices(args: argparse.Namespace) -> list[str]:
    from agent.core.contract.topics import check_segment

    if args.devices:
        devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    elif args.site:
        devices = _site_devices(args.db, args.site)
        if not devices:
            raise ConfigError(f"the ingest database has seen no device of site {args.site!r}",
                              key="--site", fix="name them with --devices")
    else:
        raise ConfigError("give --devices D1,D2 or --site S", key="--devices",
                          fix="name the devices to deploy to")
    try:
        for d in devices:
            check_segment("device", d)
    except ValueError as exc:
        raise ConfigError(str(exc), key="--devices", fix="device ids as in [agent] device_id"
                          ) from None
    if len(set(devices)) != len(devices):
        raise ConfigError("a device is named twice", key="--devices", fix="name each once")
    return devices


def _site_devices(db: str, site: str) -> list[str]:
    from agent.backend.deploy import RolloutStore

    store = RolloutStore(db)
    try:
        return store.site_devices(site)
    finally:
        store.close()


def cmd_deploy(args: argparse.Namespace) -> int:
    from agent.backend.deploy import RolloutStore

    if args.target == "status":
        store = RolloutStore(args.db)
        try:
            rollouts = store.status(args.rollout)
        finally:
            store.close()
        _print_status(rollouts, args.json)
        return 0
    if args.target == "resume":
        if args.rollout is None:
            raise ConfigError("deploy resume needs the rollout's id", key="ID",
                              fix="deploy resume ID --db DB --broker URL (ids: deploy status)")
        return _rollout(args, resume=args.rollout)
    if args.rollout is not None:
        raise ConfigError(f"unexpected argument {args.rollout!r}", fix="deploy BUNDLE --devices "
                          "D1,D2 ...; deploy status [ID]; or deploy resume ID")
    return _rollout(args)


def _rollout(args: argparse.Namespace, resume: str | None = None) -> int:
    """A new rollout, or (``resume``, or ``--id`` of one that exists) the rest of one."""
    from agent.backend.deploy import (
        Bundle,
        DeviceOutcome,
        RolloutPlan,
        RolloutStore,
        resume_rollout,
        run_rollout,
    )
    from agent.cli.ctl import CommandClient, NoReply
    from agent.core.contract.command import CommandReply

    if not args.broker:
        raise ConfigError("a rollout needs --broker", key="--broker",
                          fix="give the broker the devices use")
    if args.min_fps_ratio is not None and not 0 <= args.min_fps_ratio <= 1:
        raise ConfigError(f"--min-fps-ratio {args.min_fps_ratio} is not in [0, 1]",
                          key="--min-fps-ratio", fix="give a share such as 0.8")
    bundle = None if resume else Bundle.read(Path(args.target))
    store = RolloutStore(args.db)
    try:
        if resume is None and args.rollout_id and any(r["id"] == args.rollout_id
                                                       for r in store.status()):
            resume = args.rollout_id  # the same command again: continue where it stopped
        if resume is not None:
            store.status(resume)  # one line naming it when there is no such rollout
            site = args.site or store.options(resume).get("site") or "default"
            rollout = resume
            plan = None
        else:
            assert bundle is not None
            devices = _devices(args)
            site = args.site or "default"
            rollout = (args.rollout_id
                       or f"{bundle.model[:24]}-v{bundle.version}-{uuid.uuid4().hex[:6]}")
            plan = RolloutPlan(tuple(devices), canary=args.canary, batch=args.batch,
                               max_failures=args.max_failures)
    except BaseException:
        store.close()
        raise
    try:
        client = CommandClient(args.broker, username=args.username,
                               password=os.environ.get("LEPTON_CTL_PASSWORD"), ca=args.ca,
                               cert=args.cert, key=args.key)
    except BaseException:
        store.close()
        raise
    if plan is not None and bundle is not None:
        store.create(rollout, bundle, plan, {"health_s": args.health_s,
                                             "min_fps_ratio": args.min_fps_ratio,
                                             "site": site})

    def send_to(device: str) -> Any:
        def send(name: str, command_args: dict[str, Any], timeout: float) -> CommandReply | None:
            try:
                reply: CommandReply = client.send(site, device, name, command_args, timeout)
            except NoReply:
                return None
            return reply
        return send

    def progress(outcome: DeviceOutcome) -> None:
        if not args.json:
            print(f"{outcome.device}: {outcome.outcome}"
                  + (f" ({outcome.reason})" if outcome.reason else ""), flush=True)

    started = time.monotonic()
    health = {k: v for k, v in (("health_s", args.health_s),
                                ("min_fps_ratio", args.min_fps_ratio)) if v is not None}
    try:
        if plan is None:
            if not args.json:
                print(f"rollout {rollout}: resuming", flush=True)
            state = resume_rollout(store, rollout, send_to, bundle=bundle, progress=progress,
                                   timeout_s=args.timeout, **health)
        else:
            assert bundle is not None
            state = run_rollout(store, rollout, bundle, plan, send_to, progress=progress,
                                timeout_s=args.timeout, **health)
        report = store.status(rollout)[0]
    finally:
        store.close()
        client.close()
    if args.json:
        print(json.dumps({**report, "seconds": round(time.monotonic() - started, 1)}))
    else:
        print(f"rollout {rollout}: {state}" + (f" ({report['reason']})" if report["reason"]
                                                else ""))
    return 0 if state == "succeeded" else 1


def _print_status(rollouts: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rollouts))
        return
    if not rollouts:
        print("no rollouts")
    for r in rollouts:
        counts: dict[str, int] = {}
        for d in r["devices"]:
            counts[d["state"]] = counts.get(d["state"], 0) + 1
        print(f"{r['id']}: {r['model']} v{r['version']} {r['state']}"
              + (f" ({r['reason']})" if r["reason"] else "") + ": "
              + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
        for d in r["devices"]:
            print(f"  batch {d['batch']} {d['device']}: {d['state']}"
                  + (f" ({d['reason']})" if d["reason"] else ""))


def main(argv: list[str] | None = None) -> int:
    """``python -m agent.cli.deploy ...``: the same command until it is registered in
    ``lepton-agent`` (agent/cli/__init__.py's list of groups)."""
    from agent.errors import AgentError

    parser = argparse.ArgumentParser(prog="lepton-agent")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["deploy", *(sys.argv[1:] if argv is None else argv)])
    try:
        code: int = args.func(args)
    except AgentError as exc:
        print(f"lepton-agent: error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
