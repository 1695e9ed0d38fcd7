"""Launch ``pullwake run`` as a child process, restart it, and read what its lifecycle did.

:class:`RunnerProcess` runs ``python -m pullwake run MODULE:HANDLER --url ... --runner-id ID``
with ``--transitions-log`` pointing into ``log_dir``, so every lifecycle record of every process
it starts lands in one JSON-lines file (``runtime/transitions_log.py``): :meth:`transitions`
and :meth:`state` read it, no log parsing involved. stderr (the runner's log) goes to
``<log_dir>/runner-<id>.log``. Each process started is an :class:`Instance` (pid, start time,
how it ended), so a test can tell which ones it killed.

A runner prints no ready line: wait for :meth:`state` to reach ``streaming`` (with
:func:`~pullwake.testing.waiting.wait_until`). Every call blocks and is bounded; from async
code use ``anyio.to_thread`` for :meth:`kill`, :meth:`terminate` and :meth:`close`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs

from pullwake.runtime.transitions_log import LoggedTransition, read_transitions

from .processes import STOP_TIMEOUT

__all__ = ["Instance", "RunnerProcess"]


@attrs.define
class Instance:
    """One process of a runner: its pid and how it ended (``killed``, ``stopped``, ...)."""

    pid: int
    started_at: float
    ended: str | None = None
    exit_status: int | None = None


class RunnerProcess:
    """One runner (``pullwake run``), restartable; every process it had is an :class:`Instance`."""

    def __init__(
        self,
        handler: str,
        urls: Sequence[str],
        *,
        runner_id: str,
        log_dir: Path,
        backend: str = "asyncio",
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.handler = handler
        self.urls = list(urls)
        self.id = runner_id
        self.backend = backend
        self.args = list(args)
        self.env = dict(env or {})
        self.cwd = cwd
        self.log_path = Path(log_dir) / f"runner-{runner_id}.log"
        self.transitions_path = Path(log_dir) / f"runner-{runner_id}.transitions.jsonl"
        # Invariant: the live process, or the last one (reaped) after it ended.
        self.proc: subprocess.Popen[bytes] | None = None
        # Invariant: one entry per process started, in order; the last is ``proc``'s.
        self.instances: list[Instance] = []

    @property
    def running(self) -> bool:
        """Whether the current process is alive."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        """The current (or last) process's id."""
        if self.proc is None:
            raise RuntimeError(f"runner {self.id} was never started")
        return self.proc.pid

    def command(self) -> list[str]:
        """Return the command line of the next start."""
        urls = [arg for url in self.urls for arg in ("--url", url)]
        return [
            sys.executable,
            "-m",
            "pullwake",
            "run",
            self.handler,
            *urls,
            "--runner-id",
            self.id,
            "--backend",
            self.backend,
            "--transitions-log",
            str(self.transitions_path),
            *self.args,
        ]

    def start(self) -> RunnerProcess:
        """Start a process (without waiting: a runner prints no ready line)."""
        if self.running:
            raise RuntimeError(f"runner {self.id} is already running")
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- start #{len(self.instances) + 1}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                cwd=self.cwd,
                env=environment,
            )
        self.instances.append(Instance(self.proc.pid, time.time()))
        return self

    def _ended(self, how: str) -> None:
        assert self.proc is not None
        instance = self.instances[-1]
        if instance.ended is None:
            instance.ended = how
            instance.exit_status = self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the current process (no cleanup at all) and reap it."""
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)
            self._ended("killed")

    def terminate(self, timeout: float = STOP_TIMEOUT + 5) -> int | None:
        """SIGTERM (a clean stop) and return the exit status; SIGKILL (None) if it hangs."""
        if not self.running:
            return None
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            status = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)
            self._ended("hung at stop")
            return None
        self._ended("stopped")
        return status

    def close(self) -> None:
        """Make sure no process is left (teardown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)
            self._ended("closed")
        elif self.proc is not None:
            self._ended("exited")

    def killed_pids(self) -> list[int]:
        """Return the pids of the processes :meth:`kill` ended."""
        return [i.pid for i in self.instances if i.ended == "killed"]

    def log_text(self) -> str:
        """Return everything every process wrote to stderr."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def transitions(self) -> list[LoggedTransition]:
        """Return the lifecycle transitions of every process so far, oldest first."""
        return [t for t in read_transitions(self.transitions_path) if t.kind == "transition"]

    def state(self) -> str:
        """Return the leaf state after the last transition (``stopped`` before any)."""
        steps = self.transitions()
        return steps[-1].target[-1] if steps and steps[-1].target else "stopped"
