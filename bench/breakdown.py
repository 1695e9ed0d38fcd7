"""Fold py-spy samples into components: where a process's CPU per cycle goes.

:func:`record` runs ``py-spy record --format raw`` (in the venv) against a process for a
while; :func:`leaves` reads the raw output (one line per distinct stack, ``frame;frame;...
count``, innermost frame last) into samples per innermost frame (what the benchmark saves),
and :func:`fold` (when the document is written) gives each sample to a component by the file
of its innermost frame: httpx, httpcore, uvicorn, starlette, anyio's thread hand-off,
``pullwake.server.store``, ``pullwake.runtime.claims``, json, the event loop, and so on
(:data:`COMPONENTS`, first match wins). py-spy samples every thread; its own idle detection
does not work on this machine (threads waiting in ``epoll`` or on a condition show up), so
samples whose innermost frame is a known wait (:data:`IDLE`) are counted apart and left out
of the shares. A worker thread inside SQLite's C code counts as the Python line that called
it (``pullwake.server.store``); time a thread spends in C with the GIL released counts too.
The samples are of wall time, not CPU time: on a busy machine a thread that is runnable but
waiting for a core counts where it stands, so the shares are of "busy" time.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections import Counter
from pathlib import Path

import anyio

__all__ = ["COMPONENTS", "IDLE_NAME", "component", "fold", "leaves", "py_spy", "record"]

#: (component, pattern on the innermost frame's file), first match wins.
COMPONENTS: tuple[tuple[str, str], ...] = (
    ("httpx", r"(^|/)httpx/"),
    ("httpcore", r"(^|/)httpcore/"),
    ("h11", r"(^|/)h11/"),
    ("httpx-sse", r"(^|/)httpx_sse/"),
    ("uvicorn + httptools", r"(^|/)(uvicorn|httptools)/"),
    ("hypercorn", r"(^|/)hypercorn/"),
    ("starlette", r"(^|/)starlette/"),
    (
        "anyio (incl. its to_thread hand-off)",
        r"(^|/)anyio/|(^|/)trio/_threads\.py|(^|/)trio/_core/_thread_cache\.py",
    ),
    ("sqlite3 module", r"(^|/)sqlite3/"),
    ("psycopg", r"(^|/)psycopg(_pool|_binary)?/"),
    ("pullwake.server.store (incl. its SQL calls)", r"(^|/)server/store/"),
    ("pullwake.server (HTTP handlers, SSE)", r"(^|/)server/"),
    ("pullwake.runtime.claims", r"(^|/)runtime/claims\.py"),
    ("pullwake.runtime.client", r"(^|/)runtime/client\.py"),
    ("pullwake.runtime (other)", r"(^|/)(runtime|machines)/"),
    (
        "bench handler (a pipe write per call; wall time, mostly waking the reader)",
        r"(^|/)runner_app\.py",
    ),
    ("json", r"(^|/)json/"),
    ("trio loop + socket calls", r"(^|/)trio/"),
    ("asyncio loop + socket calls", r"(^|/)asyncio/|^selectors\.py|^socket\.py"),
    ("threading (locks, conditions: waking threads)", r"^threading\.py|^queue\.py"),
    ("logging", r"(^|/)logging/"),
    ("attrs", r"(^|/)attrs?/|^<attrs generated"),
    ("prometheus_client", r"(^|/)prometheus_client/"),
)
#: Innermost frames that wait (py-spy's idle detection does not see them here): dropped.
IDLE = re.compile(
    r"^(Condition\.wait \(threading|EpollSelector\.select \(selectors|"
    r"EpollIOManager\.get_events \(trio|Event\.wait \(threading|"
    r"WorkerThread\._work \(trio/_core/_thread_cache|"
    r"Thread\._wait_for_tstate_lock \(threading|"
    # The SQLite store's threads waiting for a job (a queue's get, in C).
    r"JobThreads\._wait_for_job \(server/store/sqlite|"
    # psycopg's blocking wait for PostgreSQL's answer (the GIL released, in C).
    r"(Base)?Connection\.wait \(psycopg/)"
)
#: The innermost frame, ``function (file:line)``.
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(:\d+)?\)$")
_COMPILED = [(name, re.compile(pattern)) for name, pattern in COMPONENTS]
OTHER = "other (stdlib helpers: contextlib, typing, enum, ...)"
IDLE_NAME = "idle (waiting: dropped)"


def py_spy() -> str | None:
    """Return the py-spy next to this interpreter (the venv's), or on the PATH."""
    here = Path(sys.executable).with_name("py-spy")
    if here.exists():
        return str(here)
    return shutil.which("py-spy")


async def record(pid: int, seconds: float, out: Path, rate: int = 200) -> str | None:
    """Sample ``pid`` for ``seconds`` into ``out``; return None, or why it could not."""
    tool = py_spy()
    if tool is None:
        return "py-spy is not installed"
    command = [
        tool,
        "record",
        "-p",
        str(pid),
        "-d",
        str(max(1, round(seconds))),
        "-r",
        str(rate),
        "--format",
        "raw",
        "-o",
        str(out),
    ]
    result = await anyio.run_process(command, check=False)
    if result.returncode != 0 or not await anyio.Path(out).exists():
        error = result.stderr.decode(errors="replace").strip().splitlines()
        return f"py-spy failed ({result.returncode}): {error[-1] if error else 'no output'}"
    return None


def component(frame: str) -> str:
    """Return the component of one frame (``function (file:line)``), or :data:`IDLE_NAME`."""
    if IDLE.match(frame):
        return IDLE_NAME
    match = _FRAME.match(frame)
    path = match["file"] if match else frame
    for name, pattern in _COMPILED:
        if pattern.search(path):
            return name
    return OTHER


def leaves(raw: str) -> Counter[str]:
    """Return the samples of a py-spy raw profile per innermost frame (what is saved)."""
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        counts[stack.rsplit(";", 1)[-1]] += int(count)
    return counts


def fold(frames: dict[str, int]) -> Counter[str]:
    """Return the samples per component, from the samples per innermost frame."""
    counts: Counter[str] = Counter()
    for frame, count in frames.items():
        counts[component(frame)] += count
    return counts
