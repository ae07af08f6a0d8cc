"""The real-process rig: a private mosquitto, the ingest consumer and the agent, each a real
``python -m agent`` process on loopback, for the demo, ``faults`` and the tests.

:class:`IngestProcess` and :class:`AgentProcess` start, stop (returning what the process prints
at exit), kill and restart one process; :class:`Rig` owns a broker and every process it started,
and as a context manager reaps them all, whatever happened in between.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from agent.config import load_config
from agent.devtools.mosquitto import LocalBroker
from agent.errors import AgentError
from agent.paths import resolve_model
from agent.service.status import query, socket_path

DEFAULT_MODEL = resolve_model(Path("models/lepton-vehicles-tiny"))


def agent_cmd(*args: str) -> list[str]:
    """The command line of ``lepton-agent ARGS`` with this interpreter."""
    return [sys.executable, "-m", "agent", *args]


def wait_for_file(path: Path, process: subprocess.Popen[str], timeout: float,
                  what: str = "ingest") -> None:
    """Wait until ``process`` writes ``path``; fail if it dies first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AgentError(f"{what} exited early with status {process.returncode}")
        if time.monotonic() > deadline:
            raise AgentError(f"{what} did not subscribe within {timeout:.0f}s")
        time.sleep(0.05)


@dataclass(frozen=True)
class RigPipeline:
    """One ``[[pipelines]]`` table of a rig config; keys left None take ``[source]``/``[model]``'s."""

    stream: str
    source: str
    model: Path | None = None
    threads: int | None = None
    max_frames: int | None = None
    pace: str | None = None
    loop: bool | None = None
    drop_policy: str | None = None

    def toml(self) -> str:
        """This pipeline as a ``[[pipelines]]`` table (strings quoted as TOML basic strings)."""
        lines = ["[[pipelines]]", f"stream = {json.dumps(self.stream)}",
                 f"source = {json.dumps(self.source)}"]
        if self.model is not None:
            lines.append(f"model = {json.dumps(str(self.model))}")
        if self.threads is not None:
            lines.append(f"threads = {self.threads}")
        if self.max_frames is not None:
            lines.append(f"max_frames = {self.max_frames}")
        if self.pace is not None:
            lines.append(f"pace = {json.dumps(self.pace)}")
        if self.loop is not None:
            lines.append(f"loop = {'true' if self.loop else 'false'}")
        if self.drop_policy is not None:
            lines.append(f"drop_policy = {json.dumps(self.drop_policy)}")
        return "\n".join(lines) + "\n"


def write_agent_config(path: Path, *, device_id: str, site: str, state_dir: Path,
                       broker_url: str, model: Path = DEFAULT_MODEL, grace: float = 8.0,
                       ack_timeout_s: float = 2, delivery: str | None = None,
                       budget: str | None = None, threads: int = 1,
                       thread_budget: int | None = None,
                       pipelines: Sequence[RigPipeline] = ()) -> Path:
    """An agent config for the rig: ``threads`` interpreter threads (one), quick reconnects,
    telemetry every second, no web console (a rig runs several agents at once);
    ``pipelines`` become ``[[pipelines]]`` tables (none: the one pipeline ``--source`` or
    ``[source]`` gives), ``thread_budget`` sets ``[agent]``'s."""
    outbox = [f"ack_timeout_s = {ack_timeout_s}"]
    if delivery:
        outbox.append(f'delivery = "{delivery}"')
    if budget:
        outbox.append(f'budget_bytes = "{budget}"')
    agent_extra = f"thread_budget = {thread_budget}\n" if thread_budget is not None else ""
    tables = "\n".join(p.toml() for p in pipelines)
    path.write_text(f"""
[agent]
device_id = "{device_id}"
site = "{site}"
state_dir = "{state_dir}"
shutdown_grace_s = {grace}
{agent_extra}
[model]
path = "{model}"
num_threads = {threads}

[mqtt]
broker = "{broker_url}"
reconnect_initial_s = 0.1
reconnect_max_s = 0.5
telemetry_interval_s = 1

[web]
listen = ""

[outbox]
""" + "\n".join(outbox) + "\n" + ("\n" + tables if tables else ""))
    return path


class _Drain:
    """Reads one pipe of a process to its end in a thread, so a chatty process never blocks."""

    def __init__(self, stream: IO[str] | None) -> None:
        self.lines: list[str] = []
        self._thread: threading.Thread | None = None
        if stream is not None:
            self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
            self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def join(self, timeout: float = 10) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


class _Process:
    """One ``python -m agent`` process, restartable with the same command line."""

    what = "process"

    def __init__(self, args: list[str], *, cwd: Path | None = None,
                 env: Mapping[str, str] | None = None, capture_stderr: bool = True,
                 preexec_fn: Callable[[], Any] | None = None) -> None:
        self.args = args
        self.cwd = cwd
        self.env = {**os.environ, **(env or {})}
        self.capture_stderr = capture_stderr
        self.preexec_fn = preexec_fn
        self._proc: subprocess.Popen[str] | None = None
        self._out = _Drain(None)
        self._err = _Drain(None)

    @property
    def proc(self) -> subprocess.Popen[str]:
        if self._proc is None:
            raise AgentError(f"the {self.what} was never started")
        return self._proc

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def _spawn(self) -> None:
        if self.running:
            raise AgentError(f"the {self.what} is already running (pid {self.proc.pid})")
        self._proc = subprocess.Popen(
            agent_cmd(*self.args), cwd=self.cwd, env=self.env, preexec_fn=self.preexec_fn,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE if self.capture_stderr else None,
            text=True)
        self._out = _Drain(self._proc.stdout)
        self._err = _Drain(self._proc.stderr)

    @property
    def log(self) -> str:
        """What the latest run wrote to stderr so far (empty when not captured)."""
        return self._err.text

    @property
    def stdout(self) -> str:
        return self._out.text

    def wait(self, timeout: float | None = None) -> int:
        """Until the process exits (``timeout`` is a hang guard); its exit status."""
        code = self.proc.wait(timeout)
        self._out.join()
        self._err.join()
        return code

    def send(self, sig: int) -> None:
        if self.running:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL and reap; nothing is read from the process."""
        if self._proc is None:
            return
        self.send(signal.SIGKILL)
        self.wait(60)

    def last_json(self) -> dict[str, Any]:
        """The last JSON object the process printed on stdout."""
        for line in reversed(self._out.lines):
            if line.startswith("{"):
                data: dict[str, Any] = json.loads(line)
                return data
        raise AgentError(f"the {self.what} printed no JSON at exit: {self.log[-800:]}")

    def finish(self, timeout: float = 120.0) -> dict[str, Any]:
        """Until the process exits by itself; the JSON it printed (exit status must be 0)."""
        code = self.wait(timeout)
        if code != 0:
            raise AgentError(f"the {self.what} exited with status {code}:\n{self.log[-2000:]}")
        return self.last_json()

    def stop(self, timeout: float = 60.0, sig: int = signal.SIGTERM) -> dict[str, Any]:
        """``sig`` (SIGTERM), then the JSON the process prints at exit (exit status 0)."""
        self.send(sig)
        return self.finish(timeout)


class IngestProcess(_Process):
    """``lepton-agent ingest`` into SQLite (``db``) or ``db_url``; :meth:`start` returns once it
    has subscribed (it writes its ready file), :meth:`stop` returns its counters (IngestStats)."""

    what = "ingest"

    def __init__(self, broker_url: str, db: Path, *flags: str, client_id: str | None = None,
                 group: str | None = None, db_url: str | None = None,
                 log_level: str = "warning", cwd: Path | None = None,
                 capture_stderr: bool = True, ready_timeout: float = 60.0) -> None:
        self.db = db
        self.ready = db.with_suffix(".ready")
        self.ready_timeout = ready_timeout
        args = ["ingest", "--broker", broker_url, "--db", db_url or f"sqlite:///{db}",
                "--ready-file", str(self.ready), "--log-level", log_level]
        if client_id:
            args += ["--client-id", client_id]
        if group is not None:  # "" is a plain (not shared) subscription
            args += ["--group", group]
        super().__init__([*args, *flags], cwd=cwd, capture_stderr=capture_stderr)

    def start(self) -> IngestProcess:
        self.ready.unlink(missing_ok=True)
        self._spawn()
        try:
            wait_for_file(self.ready, self.proc, self.ready_timeout)
        except AgentError as exc:
            self.kill()
            raise AgentError(f"{exc}: {self.log[-800:]}") from None
        return self

    def restart(self) -> dict[str, Any]:
        """Stop (SIGTERM) and start again on the same store; the stopped run's counters."""
        stats = self.stop() if self.running else {}
        self.start()
        return stats


class AgentProcess(_Process):
    """``lepton-agent run [--config CONFIG] --json EXTRA``: its status socket, its log lines and
    the summary it prints at exit."""

    what = "agent"

    def __init__(self, config: Path | None, *extra: str, cwd: Path | None = None,
                 env: Mapping[str, str] | None = None, capture_stderr: bool = True,
                 preexec_fn: Callable[[], Any] | None = None) -> None:
        args = ["run", *(["--config", str(config)] if config else []), "--json", *extra]
        super().__init__(args, cwd=cwd, env=env, capture_stderr=capture_stderr,
                         preexec_fn=preexec_fn)
        self.socket: Path | None = None
        if config is not None:
            agent = load_config(config).agent
            # Where the agent binds it, in the environment it runs with.
            self.socket = socket_path(agent.state_dir, agent.status_socket, self.env)

    def start(self) -> AgentProcess:
        self._spawn()
        return self

    def restart(self, sig: int = signal.SIGTERM) -> None:
        """Stop with ``sig`` (its exit status not checked) and start again."""
        if self.running:
            self.send(sig)
            self.wait(120)
        self.start()

    def summary(self) -> dict[str, Any]:
        """The run summary the agent printed at exit."""
        return self.last_json()

    def status(self) -> dict[str, Any] | None:
        """The running agent's snapshot (None before it answers); fails once it has exited."""
        if self.socket is None:
            raise AgentError("this agent was started without a config: its status socket is "
                             "unknown", fix="start it with a config")
        if not self.running:
            raise AgentError(f"agent exited with status {self.returncode}:\n{self.log}")
        return query(self.socket)

    def wait_status(self, predicate: Callable[[dict[str, Any]], bool], what: str,
                    timeout: float = 60.0) -> dict[str, Any]:
        """The first snapshot for which ``predicate`` holds; fails naming ``what`` after
        ``timeout`` (a hang guard, generous on a loaded machine)."""
        deadline = time.monotonic() + timeout
        while True:
            snap = self.status()
            if snap is not None and predicate(snap):
                return snap
            if time.monotonic() > deadline:
                raise AgentError(f"timed out after {timeout:.0f}s waiting for {what}; last "
                                 f"status {snap}\nagent log:\n{self.log}")
            time.sleep(0.1)


class Rig:
    """A private mosquitto under ``workdir/broker`` plus the ingest and agent processes started
    through it; closing (or leaving the ``with``) kills whatever still runs and stops the broker."""

    def __init__(self, workdir: Path, broker: LocalBroker | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.broker = broker or LocalBroker(workdir / "broker")
        self.processes: list[_Process] = []

    def ingest(self, db: Path | None = None, *flags: str, start: bool = True,
               **kw: Any) -> IngestProcess:
        """An ingest consumer on this rig's broker (started unless ``start`` is false)."""
        proc = IngestProcess(self.broker.url, db or self.workdir / "ingest.db", *flags, **kw)
        self.processes.append(proc)
        return proc.start() if start else proc

    def agent(self, config: Path | None, *extra: str, start: bool = True,
              **kw: Any) -> AgentProcess:
        """An agent run (started unless ``start`` is false)."""
        proc = AgentProcess(config, *extra, **kw)
        self.processes.append(proc)
        return proc.start() if start else proc

    def config(self, *, device_id: str, site: str = "rig", **kw: Any) -> Path:
        """``workdir/agent.toml`` for an agent on this rig's broker, state in ``workdir/state``."""
        return write_agent_config(self.workdir / "agent.toml", device_id=device_id, site=site,
                                  state_dir=self.workdir / "state", broker_url=self.broker.url,
                                  **kw)

    def running(self) -> Iterator[_Process]:
        return (p for p in self.processes if p.running)

    def close(self) -> None:
        for proc in reversed(self.processes):
            if proc.running:
                proc.kill()
        self.broker.close()

    def __enter__(self) -> Rig:
        self.broker.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
