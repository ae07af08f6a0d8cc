"""`lepton-agent diag`: the checks, and the support bundle."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agent.cli.common import positive
from agent.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``diag`` and its flags to the subcommands."""
    diag = sub.add_parser("diag", help="diagnostics: what is wrong and how to fix it")
    diag.add_argument("checks", nargs="*", metavar="CHECK",
                      help="checks to run (default: all): config camera sensors model pipelines "
                           "kernels broker cache clock temperature memory; or 'bundle' for a "
                           "support tarball")
    diag.add_argument("--config", type=Path)
    diag.add_argument("--board")
    diag.add_argument("--snapshot", type=Path, help="save a camera frame here")
    diag.add_argument("--output", type=Path, help="bundle path (default ./lepton-diag-DEVICE.tar.gz)")
    diag.add_argument("--json", action="store_true")
    diag.add_argument("--timeout", type=positive(float), default=20.0, help="seconds per check")
    diag.set_defaults(func=cmd_diag)


def cmd_diag(args: argparse.Namespace) -> int:
    """Run the checks; ``diag bundle`` writes them with logs and versions into a tarball.

    A config that does not load fails the config check, and every check that reads the config is
    marked as not run (running it on built-in defaults would test another device). The exit code
    is the worst status (0 pass, 1 warn, 2 fail); ``diag bundle`` exits 0 once the bundle is
    written, whatever the checks found: they are inside it and summarised on stdout."""
    from agent.config import Secrets, load_config
    from agent.diag import CheckResult, exit_code, render, run_checks, summary
    from agent.diag.checks import CONFIG_FREE, all_checks

    bundle = args.checks[:1] == ["bundle"]
    wanted = ["sensors" if c == "serial" else c for c in ([] if bundle else args.checks)]
    secrets = Secrets.from_environment()
    defaults = load_config(None, board=None)
    names = list(all_checks(defaults, secrets, None))
    unknown = [c for c in wanted if c not in names and c != "config"]
    if unknown:
        raise ConfigError(f"unknown check(s) {', '.join(unknown)}", key="diag",
                          fix=f"choose from: config, {', '.join(names)}, or 'bundle'")
    config = None
    try:
        config = load_config(args.config, board=args.board)
        config_result = CheckResult("config", "pass", f"{args.config or 'built-in defaults'} valid"
                                    + (f" (board {config.agent.board})" if config.agent.board
                                       else ""))
    except ConfigError as exc:
        config_result = CheckResult("config", "fail", exc.message, exc.fix or "")
    results: list[CheckResult] = []
    if not wanted or "config" in wanted or config is None:
        results.append(config_result)
    selected = [n for n in names if not wanted or n in wanted]
    if config is not None:
        results += run_checks({n: c for n, c in all_checks(config, secrets, args.snapshot).items()
                               if n in selected}, timeout_s=args.timeout)
    else:
        free = run_checks({n: c for n, c in all_checks(defaults, secrets, None).items()
                           if n in selected and n in CONFIG_FREE}, timeout_s=args.timeout)
        ran = {r.name: r for r in free}
        results += [ran.get(n) or CheckResult(n, "skip", "not run: it needs the config, which "
                                              "did not load (see the config check)")
                    for n in selected]
    report = {"checks": [r.to_json() for r in results], "exit_code": exit_code(results)}
    if bundle:
        from agent.diag.bundle import write_bundle
        from agent.service.status import query, socket_candidates

        cfg = config or defaults
        output = args.output or Path(f"lepton-diag-{cfg.agent.device_id}.tar.gz")
        live = None
        for path in socket_candidates(cfg.agent.state_dir, cfg.agent.status_socket):
            live = live or query(path)
        written = write_bundle(cfg, report, output, live, config_file=args.config,
                               config_error=None if config else config_result.reason)
        print(f"wrote {written} (secrets removed); checks: {summary(results)}"
              + ("; see diag.json in the bundle" if report["exit_code"] else ""))
        return 0
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render(results))
    return exit_code(results)
