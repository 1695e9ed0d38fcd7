"""Describe the machine and read a process's CPU time and memory (Linux ``/proc``).

The benchmark figures are only comparable within one run on one machine; this module records
which machine (CPU model, cores, memory, kernel, Python, package versions, Node and the
reference server) and gives the two process readings the benchmarks need: CPU seconds used
so far (user + system) and resident memory.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path

from pullwake.testing import find_bindir

__all__ = ["CpuMeter", "TreeMeter", "cpu_seconds", "describe", "rss_bytes"]

_TICKS = os.sysconf("SC_CLK_TCK")
PACKAGES = (
    "pullwake",
    "anyio",
    "httpx",
    "httpx-sse",
    "hypercorn",
    "uvicorn",
    "httptools",
    "starlette",
    "h11",
    "python-statemachine",
    "psycopg",
    "psycopg-binary",
    "psycopg-pool",
    "trio",
)


def cpu_seconds(pid: int) -> float:
    """Return the CPU seconds (user + system) process ``pid`` has used, in 10 ms ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime field 14, stime field 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / _TICKS


class CpuMeter:
    """Measure a process's CPU time between laps, to the nanosecond.

    ``/proc/PID/stat`` counts in 10 ms ticks, too coarse for an idle process that uses a few
    ticks a minute. Each thread's ``schedstat`` counts nanoseconds, but a thread that ends
    takes its count with it, so the meter keeps each thread's last reading and adds up the
    growth of every thread seen: a thread born during a lap counts in full, a thread that
    ended loses only its time since the previous lap (worker threads idle before they end).
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        # Invariant: per thread id, its schedstat run time (ns) at the last lap.
        self._last: dict[str, int] = self._read()

    def _read(self) -> dict[str, int]:
        now: dict[str, int] = {}
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                now[task.name] = int((task / "schedstat").read_text().split()[0])
            except (OSError, IndexError, ValueError):
                continue
        return now

    def lap(self) -> float:
        """Return the CPU seconds used since the last lap (or since the meter was made)."""
        now = self._read()
        used = sum(value - self._last.get(tid, 0) for tid, value in now.items())
        self._last = now
        return used / 1e9


def _stat_fields(pid: int | str) -> list[str]:
    # After the command name (which may hold spaces and brackets): state is field 3.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


class TreeMeter:
    """Measure the CPU of a process and all its children between laps (PostgreSQL's processes).

    ``/proc/PID/stat`` of the parent (the postmaster) and of each live child, in 10 ms ticks:
    user + system time of each, plus the parent's ``cutime`` + ``cstime`` (the time of the
    children it has reaped), so a backend that ends during a lap still counts. Over windows
    of seconds with hundreds of cycles the tick is fine enough.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._last = self._read()

    def _read(self) -> float:
        fields = _stat_fields(self.pid)
        # utime, stime, cutime, cstime are fields 14-17 (1-based); index 11.. after the name.
        ticks = sum(int(x) for x in fields[11:15])
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                child = _stat_fields(entry.name)
            except OSError:
                continue
            # ppid is field 4 (index 1 after the name).
            if int(child[1]) == self.pid:
                ticks += int(child[11]) + int(child[12])
        return ticks / _TICKS

    def lap(self) -> float:
        """Return the CPU seconds the tree used since the last lap (or since it was made)."""
        now = self._read()
        used, self._last = now - self._last, now
        return used


def rss_bytes(pid: int) -> int:
    """Return the resident set size of process ``pid``, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        return "not installed"
    try:
        return subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _postgres() -> str:
    bindir = find_bindir()
    if bindir is None:
        return "not installed"
    try:
        return subprocess.run(
            [str(bindir / "postgres"), "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _load() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def describe() -> dict[str, str]:
    """Return the machine and software versions, as labelled strings."""
    from servers import reference_version

    versions = []
    for name in PACKAGES:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "CPU": _cpu_model(),
        "cores": str(os.cpu_count()),
        "memory": _memory(),
        "kernel": f"{platform.system()} {platform.release()}",
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": ", ".join(versions),
        "Node": _node(),
        "reference server": reference_version(),
        "PostgreSQL": _postgres(),
        "load average at start (1, 5, 15 min)": _load(),
    }
