"""The ``lepton-agent`` command line: the parser, and the one place that turns errors into a line.

Each command group lives in its own module with its ``add_parser``; a command imports what it
needs inside its function, so that ``run`` loads no backend, benchmark or dev tool."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import select
import signal
import sys
import threading
import traceback

from agent import __version__
from agent.cli import bench, config, counts, ctl, demo, diag, faults, ingest, models, run, status, synth_clip
from agent.cli import deploy as deploy_cmd
from agent.cli import eval as eval_cmd
from agent.cli import pki as pki_cmd
from agent.cli import simulate as simulate_cmd
from agent.errors import AgentError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lepton-agent", description="Lepton Edge agent")
    parser.add_argument("--version", action="version", version=f"lepton-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (run, config, models, ingest, counts, demo, status, diag, bench, faults, synth_clip,
                  eval_cmd, pki_cmd, ctl, deploy_cmd, simulate_cmd):
        group.add_parser(sub)
    ctl.add_bench_parser(sub.choices["bench"])  # bench commands
    return parser


_USERINFO = re.compile(r"(://[^/@\s:]*:)[^/@\s]*@")


def _stdout_gone() -> bool:
    """True when whoever read our stdout has left (``lepton-agent status | head -1``): a pipe
    whose read end is closed polls as an error."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's last flush cannot fail again."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _one_line(exc: BaseException) -> str:
    """The exception as one line, with any password in a URL masked."""
    # A message that embeds a child's traceback keeps only what precedes it; the log has it all.
    text = " ".join(str(exc).split("Traceback (most recent call last)")[0].split()).rstrip(" :")
    text = _USERINFO.sub(r"\1***@", text)
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _report_crash(what: str, exc: BaseException) -> None:
    """One line on stderr naming what failed and where its full traceback was written."""
    from agent.service.logs import write_debug_log

    full = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    path = write_debug_log(f"lepton-agent {__version__}: {what}\nargv: {sys.argv}\n\n{full}")
    where = f"full traceback in {path}" if path else "no writable place for the traceback"
    with contextlib.suppress(OSError, ValueError):
        print(f"lepton-agent: internal error in {what}: {_one_line(exc)} ({where}; please report "
              "it with that file)", file=sys.stderr, flush=True)


def _thread_crash(hook: threading.ExceptHookArgs) -> None:
    if hook.exc_type is SystemExit or hook.exc_value is None:
        return
    _report_crash(f"thread {hook.thread.name if hook.thread else '?'}", hook.exc_value)


def _command_name(args: argparse.Namespace) -> str:
    words = [args.command, str(getattr(args, f"{args.command}_command", "") or "")]
    return " ".join(w for w in words if w)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Errors the agent expects (AgentError) print one line and exit 2; any
    other exception prints one line naming it and the debug log with its traceback, exit 1.
    A reader that stopped reading stdout (a pipe into head) ends the command quietly, with the
    status of a process killed by SIGPIPE (141), as other Unix tools do."""
    args = build_parser().parse_args(argv)
    what = _command_name(args)
    threading.excepthook = _thread_crash
    try:
        code = int(args.func(args))
        sys.stdout.flush()
        return code
    except AgentError as exc:
        with contextlib.suppress(OSError, ValueError):
            print(f"lepton-agent: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError as exc:
        if _stdout_gone():
            _quiet_stdout()
            return 128 + signal.SIGPIPE
        _report_crash(what, exc)
        return 1
    except (SystemExit, GeneratorExit):
        raise
    except BaseException as exc:
        _report_crash(what, exc)
        return 1
