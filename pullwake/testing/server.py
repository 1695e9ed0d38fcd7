"""Launch ``pullwake server`` as a child process: start, wait ready, break it, restart it.

:class:`ServerProcess` runs ``python -m pullwake server --port P --database URL`` with the
interpreter running the caller, reads its listening line to learn the URL, and keeps the port
across restarts (the first start may ask for port 0: the kernel picks one, and every restart
binds that one again). Its stderr goes to ``<log_dir>/<name>.stderr.log``, one ``--- start #N``
header per start, so a test can show the log when something fails.

Faults: :meth:`~ServerProcess.kill` (SIGKILL, no cleanup), :meth:`~ServerProcess.terminate`
(SIGTERM, a graceful stop), :meth:`~ServerProcess.pause` / :meth:`~ServerProcess.resume`
(SIGSTOP/SIGCONT: the process keeps its sockets and answers nothing). Every call blocks and
every wait is bounded (start: 30 s, stop: 10 s); from async code use ``anyio.to_thread``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from .errors import ProcessStartError
from .processes import START_TIMEOUT, STOP_TIMEOUT, wait_ready_line

__all__ = ["LISTENING_PREFIX", "ServerProcess"]

#: The line ``pullwake server`` prints on stdout once it accepts connections.
LISTENING_PREFIX = "pullwake server listening on "


class ServerProcess:
    """One ``pullwake server`` subprocess; restartable on the same port and database.

    Use it as a context manager (started on entry, killed on exit), or call :meth:`start`
    and :meth:`close` yourself. ``None`` for ``database_url``, ``port`` or ``backend`` leaves
    that option out, so the server's own default applies (its default database lives under
    the working directory, which is ``log_dir``).
    """

    def __init__(
        self,
        database_url: str | None,
        *,
        log_dir: Path,
        backend: str | None = "asyncio",
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        name: str = "server",
        port: int | None = 0,
    ) -> None:
        self.database_url = database_url
        self.backend = backend
        self.args = list(args)
        self.env = dict(env or {})
        self.name = name
        self.log_path = Path(log_dir) / f"{name}.stderr.log"
        # Invariant: as given until the first start; then the port every restart binds.
        self.port = port
        self.url = ""
        # Invariant: the live process, or the last one (exited) after kill/terminate.
        self.proc: subprocess.Popen[str] | None = None
        self._starts = 0

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def running(self) -> bool:
        """Whether the current process is alive (a paused one is)."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        """The current (or last) process's id."""
        if self.proc is None:
            raise RuntimeError(f"{self.name} was never started")
        return self.proc.pid

    def command(self) -> list[str]:
        """Return the command line of the next start."""
        command = [sys.executable, "-m", "pullwake", "server"]
        if self.port is not None:
            command += ["--port", str(self.port)]
        if self.database_url is not None:
            command += ["--database", self.database_url]
        if self.backend is not None:
            command += ["--backend", self.backend]
        return [*command, *self.args]

    def start(self, timeout: float = START_TIMEOUT) -> ServerProcess:
        """Start the process and wait for its listening line.

        A restart may find its port still held for a moment (a killed process's socket):
        "Address already in use" is retried until ``timeout``.
        """
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._start_once(deadline)
                return self
            except ProcessStartError as exc:
                last_start = self.stderr_text().rsplit("--- start #", 1)[-1]
                if time.monotonic() >= deadline or "Address already in use" not in last_start:
                    raise ProcessStartError(
                        f"{self.name} failed to start: {exc}\n--- stderr ---\n"
                        f"{self.stderr_text()[-4000:]}"
                    ) from None
                time.sleep(0.2)

    def _start_once(self, deadline: float) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self._starts += 1
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a") as log:
            log.write(f"--- start #{self._starts}: {' '.join(self.command())}\n")
            log.flush()
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                cwd=self.log_path.parent,
                env=environment,
            )
        try:
            self.url = wait_ready_line(self.proc, LISTENING_PREFIX, deadline)
        except BaseException:
            self.kill()
            raise
        self.port = int(self.url.rsplit(":", 1)[1])

    def stderr_text(self) -> str:
        """Return everything the process (all its starts) wrote to stderr."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for the current process to exit; return its status."""
        if self.proc is None:
            raise RuntimeError(f"{self.name} was never started")
        return self.proc.wait(timeout=timeout)

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """Send SIGTERM (a graceful stop; a paused process is resumed first); return the status."""
        if self.running:
            assert self.proc is not None
            self.resume()
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> int:
        """Send SIGKILL (no cleanup at all), reap the process and return its status."""
        if self.running:
            assert self.proc is not None
            self.proc.kill()
        return self.wait()

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): it holds its sockets but answers nothing."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Thaw a paused process (SIGCONT)."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)

    def restart(self, timeout: float = START_TIMEOUT) -> ServerProcess:
        """Stop gracefully if running, then start again on the same port and database."""
        if self.running:
            self.terminate()
        return self.start(timeout)

    def close(self) -> None:
        """Make sure the process is gone (kill it if needed) and its pipe closed."""
        if self.proc is None:
            return
        if self.running:
            self.resume()
            self.proc.kill()
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()
