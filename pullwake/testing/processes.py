"""What every launcher shares: a free port, the ready line, and the time limits.

A launched program announces that it accepts connections by printing one line on stdout
(``pullwake server listening on http://127.0.0.1:PORT``); :func:`wait_ready_line` reads until it,
bounded, and notices when the process exits first. These calls block (they wait on pipes and
``waitpid``): from async code run them with ``anyio.to_thread.run_sync``.
"""

from __future__ import annotations

import select
import socket
import subprocess
import time

from .errors import ProcessStartError

__all__ = ["START_TIMEOUT", "STOP_TIMEOUT", "free_port", "wait_ready_line"]

#: Seconds a process gets to print its ready line.
START_TIMEOUT = 30.0
#: Seconds a process gets to exit after a signal.
STOP_TIMEOUT = 10.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    Caveat: another process may take it before the caller binds it; launchers that bind it
    later retry on "Address already in use".
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready_line(proc: subprocess.Popen[str], prefix: str, deadline: float) -> str:
    """Return the rest of the first stdout line starting with ``prefix``, before ``deadline``.

    ``deadline`` is a ``time.monotonic()`` value. Raises :class:`ProcessStartError` when the
    process exits or the deadline passes first.
    """
    if proc.stdout is None:
        raise ValueError("start the process with stdout=subprocess.PIPE")
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ProcessStartError(f"no line starting with {prefix!r} in time")
        ready, _, _ = select.select([proc.stdout], [], [], min(remaining, 0.5))
        if not ready:
            if proc.poll() is not None:
                raise ProcessStartError(f"exited with status {proc.returncode} before it was ready")
            continue
        line = proc.stdout.readline()
        if not line:
            proc.wait(timeout=STOP_TIMEOUT)
            raise ProcessStartError(f"exited with status {proc.returncode} before it was ready")
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
