"""Launch the Durable Streams reference server (npm ``@durable-streams/server``) for interop.

The package is installed with ``npm install`` on first use into a cache folder outside the
source tree: ``$PULLWAKE_NODE_PREFIX`` if set, else ``<sys.prefix>/node`` (in this repository's
``make`` setup that is ``.venv/node``). :class:`ReferenceServer` then runs it with Node through
``reference_server.mjs`` (next to this module) on 127.0.0.1 and a free port, and reads its
listening line. Its state lives in memory. The script also stops when its stdin closes, so the
server never outlives the process that started it.

Needs ``node`` and ``npm`` on ``PATH`` (:class:`~pullwake.testing.errors.ToolMissing` if not).
Every call blocks; the install is bounded by 300 s, the start by 30 s, the stop by 10 s.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from .errors import LaunchError, ProcessStartError, ToolMissing
from .processes import START_TIMEOUT, STOP_TIMEOUT, wait_ready_line

__all__ = [
    "REFERENCE_PACKAGE",
    "ReferenceServer",
    "installed_version",
    "node_prefix",
    "reference_entry",
]

#: The npm package (and version) the interop tests and benchmarks pin.
REFERENCE_PACKAGE = "@durable-streams/server@0.3.7"
#: The line ``reference_server.mjs`` prints once the server accepts connections.
READY_PREFIX = "reference server listening on "
_SCRIPT = Path(__file__).with_name("reference_server.mjs")


def node_prefix() -> Path:
    """Return the npm prefix the reference server is installed into."""
    configured = os.environ.get("PULLWAKE_NODE_PREFIX")
    return Path(configured) if configured else Path(sys.prefix) / "node"


def reference_entry() -> Path:
    """Install the reference server into :func:`node_prefix` once; return its ESM entry point."""
    prefix = node_prefix()
    entry = prefix / "node_modules" / "@durable-streams" / "server" / "dist" / "index.js"
    if entry.exists():
        return entry
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise ToolMissing(
            "the reference server needs Node.js and npm on PATH (apt-get install nodejs npm)"
        )
    prefix.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix), REFERENCE_PACKAGE],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0 or not entry.exists():
        raise LaunchError(f"npm install {REFERENCE_PACKAGE} failed:\n{result.stderr[-3000:]}")
    return entry


def installed_version() -> str:
    """Return ``name@version`` of the installed reference server (installing it if needed)."""
    entry = reference_entry()
    package = json.loads((entry.parents[1] / "package.json").read_text())
    return f"{package['name']}@{package['version']}"


class ReferenceServer:
    """The reference server process (``.url``, ``.pid``); a context manager, or start/close."""

    def __init__(self) -> None:
        # Invariant: the live process between start() and close().
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> ReferenceServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def pid(self) -> int:
        """The process id."""
        if self.proc is None:
            raise RuntimeError("the reference server was never started")
        return self.proc.pid

    def start(self, timeout: float = START_TIMEOUT) -> ReferenceServer:
        """Install if needed, start the server and wait for its listening line."""
        entry = reference_entry()
        self.proc = subprocess.Popen(
            ["node", str(_SCRIPT), str(entry)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=node_prefix(),
        )
        try:
            self.url = wait_ready_line(self.proc, READY_PREFIX, time.monotonic() + timeout)
        except ProcessStartError as exc:
            self.close()
            raise ProcessStartError(f"the reference server did not start: {exc}") from None
        return self

    def close(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL if it lingers) and close its pipes."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT)
        for pipe in (proc.stdout, proc.stdin):
            if pipe is not None:
                pipe.close()
