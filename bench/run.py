"""Run every benchmark script and write ``docs/performance.md`` (``make bench``).

Each script in :data:`SCRIPTS` runs in its own process, one after another (so no benchmark
disturbs another), prints its figures as it goes and saves them as JSON. Then this module
writes ``docs/performance.md``: the machine and versions, every target of issue 12 with its
figure (the median of its runs, with the spread), the verdict (met, or missed by how much),
the servers side by side with the reference server and the loopback floor, asyncio beside
trio, the scaling tables, the profile breakdown of CPU per cycle by component, the earlier
sections (connection scale, failure detection and recovery, the idle runner), the command of
each script and, after the generated part, the hand-written analysis in ``bench/analysis.md``.

``--quick`` runs every section with fewer runs, shorter windows and fewer samples (a smoke
run, about five minutes; the document says so at the top). ``--scripts latency,floor`` runs
a subset and writes no document unless ``--out PATH`` is given (it then shows "not run" for
the rest); ``--out PATH`` writes somewhere else. ``--results DIR`` keeps the figures as JSON,
and ``--render-only --results DIR`` writes the document again from them without measuring
(after editing ``bench/analysis.md``). The exit status is 1 when a script failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
from breakdown import IDLE_NAME, fold
from figures import Figure, load
from machine import describe
from servers import REPO_ROOT

HERE = Path(__file__).parent
SCRIPTS = [
    "chart_actor.py",
    "floor.py",
    "latency.py",
    "throughput.py",
    "runner_cost.py",
    "server_cost.py",
    "connections.py",
    "failures.py",
]
#: Wall-clock budget of the whole suite (seconds): full, and --quick.
BUDGET = 25 * 60.0
QUICK_BUDGET = 8 * 60.0

BACKENDS = ("asyncio", "trio")
#: Column order of the side-by-side tables: (server, backend).
COLUMNS = [(s, b) for s in ("sqlite", "postgres", "reference") for b in BACKENDS]
SERVER_TITLES = {
    "sqlite": "pullwake, SQLite",
    "postgres": "pullwake, PostgreSQL",
    "reference": "reference server (Node)",
}


def column_title(server: str, backend: str) -> str:
    if server == "reference":
        return f"{SERVER_TITLES[server]}, runner on {backend}"
    return f"{SERVER_TITLES[server]}, {backend}"


Figures = dict[str, Figure]
#: A bound: a number, or a function of the figures (None when what it needs is missing).
Bound = Callable[[Figures], float | None]


def fixed(value: float) -> Bound:
    return lambda _: value


def median_of(key: str, factor: float = 1.0) -> Bound:
    def bound(figures: Figures) -> float | None:
        figure = figures.get(key)
        if figure is None or math.isnan(figure.median):
            return None
        return factor * figure.median

    return bound


@attrs.frozen
class Target:
    """A target: which figure, its bound (at most or at least), and where to read why."""

    text: str
    key: str
    bound: Bound
    #: "max": the figure must be at most the bound; "min": at least.
    kind: str
    #: Shown when missed: where the profile or the analysis says what would close it.
    reason: str
    #: Shown beside the figure: what the bound is (when it is another figure).
    versus: str | None = None


WHY_RUNNER = "[runner profile](#profile-runner)"
WHY_SERVER = "[server profile](#profile-server)"
WHY_BOTH = "[server](#profile-server) and [runner](#profile-runner) profiles"


def issue_targets() -> list[Target]:
    """The targets of issue 12, on each backend."""
    targets = []
    for b in BACKENDS:
        targets += [
            Target(
                f"runner CPU per wake ≤ 0.6 ms ({b})",
                f"runner.{b}.wake.cpu",
                fixed(600.0),
                "max",
                WHY_RUNNER,
            ),
            Target(
                f"server CPU per cycle ≤ 0.8 ms, SQLite ({b})",
                f"throughput.sqlite.{b}.8.server_cycle",
                fixed(800.0),
                "max",
                WHY_SERVER,
            ),
            Target(
                f"server CPU per cycle ≤ 1.5 ms, PostgreSQL ({b}; its own processes apart)",
                f"throughput.postgres.{b}.8.server_cycle",
                fixed(1500.0),
                "max",
                WHY_SERVER,
            ),
            Target(
                f"≥ 1,000 cycles/s, 8 subscriptions, one runner process, SQLite ({b})",
                f"throughput.sqlite.{b}.8",
                fixed(1000.0),
                "min",
                WHY_BOTH,
            ),
            Target(
                f"≥ 500 cycles/s, 8 subscriptions, one runner process, PostgreSQL ({b})",
                f"throughput.postgres.{b}.8",
                fixed(500.0),
                "min",
                WHY_BOTH,
            ),
            Target(
                f"wake latency p50 ≤ 2 ms, SQLite ({b})",
                f"latency.sqlite.{b}.p50",
                fixed(2.0),
                "max",
                WHY_BOTH,
            ),
            Target(
                f"wake latency p50 ≤ 3 ms, PostgreSQL ({b})",
                f"latency.postgres.{b}.p50",
                fixed(3.0),
                "max",
                WHY_BOTH,
            ),
        ]
        for server, title in (("sqlite", "SQLite"), ("postgres", "PostgreSQL")):
            targets.append(
                Target(
                    f"p50 below the reference server's, same runner, {title} ({b})",
                    f"latency.{server}.{b}.p50",
                    median_of(f"latency.reference.{b}.p50"),
                    "max",
                    WHY_SERVER,
                    versus=f"latency.reference.{b}.p50",
                )
            )
        for server, title in (("sqlite", "SQLite"), ("postgres", "PostgreSQL")):
            targets.append(
                Target(
                    f"p99 ≤ 3 × p50, {title} ({b})",
                    f"latency.{server}.{b}.p99",
                    median_of(f"latency.{server}.{b}.p50", 3.0),
                    "max",
                    "[the analysis](#analysis-wake-latency)",
                    versus=f"3 × latency.{server}.{b}.p50",
                )
            )
    return targets


def earlier_targets() -> list[Target]:
    """The targets of the earlier issue that still mean something."""
    why_fail = "[the analysis](#analysis-failure-detection-and-recovery)"
    why_scale = "[the analysis](#analysis-connection-scale)"
    return [
        Target(
            "5,000 idle readers within 400 MB server RSS",
            "connections.5000.rss",
            fixed(400.0),
            "max",
            why_scale,
        ),
        Target(
            "5,000 idle readers: keepalives under 15 % of a core",
            "connections.5000.cpu",
            fixed(15.0),
            "max",
            why_scale,
        ),
        Target(
            "server SIGKILL detected in under 100 ms",
            "failures.sigkill.default.detect",
            fixed(100.0),
            "max",
            why_fail,
        ),
        Target(
            "silent server detected within three keepalive intervals (9 s)",
            "failures.silent.default.detect",
            fixed(9000.0),
            "max",
            why_fail,
        ),
        Target(
            "reconnect within 1 s of the server returning (after SIGKILL)",
            "failures.sigkill.default.reconnect",
            fixed(1000.0),
            "max",
            why_fail,
        ),
        Target(
            "reconnect within 1 s of the server returning (silent server)",
            "failures.silent.default.reconnect",
            fixed(1000.0),
            "max",
            why_fail,
        ),
        Target(
            "reconnect within 1 s of the server returning (hung connect)",
            "failures.hung.default.reconnect",
            fixed(1000.0),
            "max",
            why_fail,
        ),
        Target(
            "idle runner under 1 % of a core (asyncio)",
            "runner.asyncio.idle.cpu",
            fixed(1.0),
            "max",
            "[the analysis](#analysis-runner-cost)",
        ),
        Target(
            "idle runner under 60 MB RSS (asyncio)",
            "runner.asyncio.idle.rss",
            fixed(60.0),
            "max",
            "[the analysis](#analysis-runner-cost)",
        ),
    ]


#: (label, asyncio key, trio key, True when higher is better) of the trio-vs-asyncio table.
def trio_pairs() -> list[tuple[str, str, str, bool]]:
    pairs: list[tuple[str, str, str, bool]] = []
    for server, title in (
        ("sqlite", "SQLite"),
        ("postgres", "PostgreSQL"),
        ("reference", "reference server"),
    ):
        for q in (50, 99):
            pairs.append(
                (
                    f"wake latency p{q}, {title}",
                    f"latency.{server}.asyncio.p{q}",
                    f"latency.{server}.trio.p{q}",
                    False,
                )
            )
        for lanes in (1, 8):
            key = f"throughput.{server}.{{}}.{lanes}"
            pairs.append(
                (
                    f"cycles/s, {lanes} subscription(s), {title}",
                    key.format("asyncio"),
                    key.format("trio"),
                    True,
                )
            )
        if server != "reference":
            pairs.append(
                (
                    f"server CPU per cycle, 8 subscriptions, {title}",
                    f"throughput.{server}.asyncio.8.server_cycle",
                    f"throughput.{server}.trio.8.server_cycle",
                    False,
                )
            )
        pairs.append(
            (
                f"runner CPU per cycle, 8 subscriptions, {title}",
                f"throughput.{server}.asyncio.8.runner_cycle",
                f"throughput.{server}.trio.8.runner_cycle",
                False,
            )
        )
    pairs += [
        (
            "runner CPU per wake (one at a time)",
            "runner.asyncio.wake.cpu",
            "runner.trio.wake.cpu",
            False,
        ),
        ("idle runner CPU", "runner.asyncio.idle.cpu", "runner.trio.idle.cpu", False),
        ("idle runner RSS", "runner.asyncio.idle.rss", "runner.trio.idle.rss", False),
        (
            "server CPU per request: HEAD, SQLite",
            "server_cost.sqlite.head",
            "server_cost.sqlite_trio.head",
            False,
        ),
        (
            "server CPU per request: append, SQLite",
            "server_cost.sqlite.post",
            "server_cost.sqlite_trio.post",
            False,
        ),
        ("actor, per lifecycle event", "actor.asyncio.event", "actor.trio.event", False),
    ]
    return pairs


class Document:
    """The generated Markdown, built line by line."""

    def __init__(self, figures: Figures) -> None:
        self.figures = figures
        self.lines: list[str] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def figure(self, key: str) -> Figure | None:
        figure = self.figures.get(key)
        if figure is None or not figure.runs or math.isnan(figure.median):
            return None
        return figure

    def cell(self, key: str) -> str:
        if not key:
            return "—"
        figure = self.figures.get(key)
        if figure is None:
            return "not run"
        if not figure.runs or math.isnan(figure.median):
            return "failed"
        spread = f"{figure.show(figure.low)}–{figure.show(figure.high)}"
        return f"**{figure.show(figure.median)}** {figure.unit} ({spread})"

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.add("| " + " | ".join(header) + " |", "|" + "---|" * len(header))
        for row in rows:
            self.add("| " + " | ".join(row) + " |")
        self.add("")

    def matrix(self, rows: list[tuple[str, list[str]]], header: list[str]) -> None:
        self.table(header, [[label, *(self.cell(k) for k in keys)] for label, keys in rows])

    def verdict(self, target: Target) -> tuple[str, str]:
        """Return (verdict, how far off) of one target."""
        figure = self.figure(target.key)
        bound = target.bound(self.figures)
        if figure is None or bound is None:
            return "not measured", ""

        def ok(value: float) -> bool:
            return value <= bound if target.kind == "max" else value >= bound

        value = figure.median
        if ok(value):
            runs = [r for r in figure.runs if not math.isnan(r)]
            missed_runs = sum(1 for r in runs if not ok(r))
            if missed_runs:
                return f"met (median); {missed_runs} of {len(runs)} runs missed", ""
            return "met", ""
        gap = abs(value - bound)
        if target.kind == "max":
            how = f"over by {figure.show(gap)} {figure.unit} ({value / bound:.1f}× the bound)"
        else:
            how = f"short by {figure.show(gap)} {figure.unit} (at {value / bound:.0%} of the bound)"
        return "**missed**", how

    def targets(self, targets: list[Target]) -> None:
        rows = []
        for target in targets:
            value = self.cell(target.key)
            if target.versus is not None:
                bound = target.bound(self.figures)
                shown = "n/a" if bound is None else f"{bound:,.2f}"
                value += f" vs {shown}"
                if target.versus.startswith("3 × "):
                    value += " (3 × its p50)"
                else:
                    value += " (reference)"
            verdict, how = self.verdict(target)
            rows.append(
                [target.text, value, verdict, how, target.reason if verdict == "**missed**" else ""]
            )
        self.table(["target", "figure: median (spread)", "verdict", "by how much", "see"], rows)

    def trio_table(self) -> None:
        rows = []
        for label, a_key, t_key, higher in trio_pairs():
            a, t = self.figure(a_key), self.figure(t_key)
            if a is None or t is None or a.median == 0:
                rows.append([label, self.cell(a_key), self.cell(t_key), "—", "not measured"])
                continue
            ratio = t.median / a.median
            worse = (1 / ratio if ratio else math.inf) if higher else ratio
            verdict = "met" if worse <= 1.2 else f"**missed** (trio {worse - 1:.0%} worse)"
            rows.append([label, self.cell(a_key), self.cell(t_key), f"{ratio:.2f}", verdict])
        self.table(["figure", "asyncio", "trio", "trio / asyncio", "within 20 %"], rows)


def profile_tables(doc: Document, profiles: dict[str, Any]) -> None:
    """The py-spy breakdowns: share of busy samples × CPU per cycle, per component."""
    for side, anchor in (("server", "profile-server"), ("runner", "profile-runner")):
        doc.add(f'<a id="{anchor}"></a>', "", f"### Profile: {side}", "")
        for config, sides in profiles.items():
            server, backend = config.split(".")
            per_cycle = doc.figure(f"throughput.{server}.{backend}.8.{side}_cycle")
            data = sides.get(side, {})
            title = column_title(server, backend)
            if "error" in data:
                doc.add(f"{title}: no profile ({data['error']}).", "")
                continue
            folded = fold(data.get("frames", {}))
            idle = folded.pop(IDLE_NAME, 0)
            busy = dict(folded)
            total = sum(busy.values())
            if not total:
                doc.add(f"{title}: no busy samples.", "")
                continue
            cycle = per_cycle.median if per_cycle is not None else math.nan
            doc.add(
                f"{title}, 8 subscriptions: {total:,} busy samples ({idle:,} waiting ones left "
                f"out); CPU per cycle {cycle:,.0f} µs (the matrix's median)."
                if not math.isnan(cycle)
                else f"{title}: {total:,} busy samples ({idle:,} waiting ones left out).",
                "",
            )
            rows = []
            for name, count in sorted(busy.items(), key=lambda kv: -kv[1]):
                share = count / total
                us = "—" if math.isnan(cycle) else f"{share * cycle:,.0f} µs"
                rows.append([name, f"{share:.1%}", us])
            doc.table(["component", "share of busy samples", "≈ CPU per cycle"], rows)


def write_document(
    out: Path,
    machine: dict[str, str],
    results: dict[str, dict[str, Any]],
    figures: Figures,
    timing: dict[str, float],
    load_after: str,
    quick: bool,
) -> None:
    doc = Document(figures)
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    total = sum(timing.values())
    runs = sorted({len(f.runs) for f in figures.values() if f.runs})
    shown_runs = "–".join(str(r) for r in (runs[0], runs[-1])) if runs else "?"
    if len(runs) == 1:
        shown_runs = str(runs[0])
    doc.add(
        "# Performance",
        "",
        "<!-- Generated by `make bench` (bench/run.py). Do not edit: the figures come from "
        "the run, the analysis from bench/analysis.md. -->",
        "",
    )
    if quick:
        doc.add(
            "> **QUICK RUN (`make bench BENCH_ARGS=--quick`): a smoke test that every section "
            "runs and renders, with 2 runs per figure, short windows and few samples. Do not "
            "quote these figures; run `make bench` for the real ones.**",
            "",
        )
    doc.add(
        f"Measured by `make bench` on {now}, all in one run ({total:.0f} s) on one machine, so "
        "the ratios between columns hold even where absolute times drift. Every figure is the "
        f"median of its runs ({shown_runs} per figure), with the spread (lowest–highest run) in "
        "brackets. Each script runs alone: `.venv/bin/python bench/<script>.py` (commands "
        "below). Verdicts are taken on the median.",
        "",
    )
    load_before = machine.get("load average at start (1, 5, 15 min)", "")
    try:
        busy = float(load_before.split()[0]) > 0.5 or float(load_after.split()[0]) > 0.5
    except (ValueError, IndexError):
        busy = False
    if busy:
        doc.add(
            f"> **Busy machine:** the load average was {load_before} at the start and "
            f"{load_after} at the end, so other work shared these cores and the figures are "
            "noisy (slower, wider spreads). Rerun `make bench` on a quiet machine to quote them.",
            "",
        )
    doc.add("## Machine", "")
    doc.table(
        ["what", "this run"],
        [[k, v] for k, v in machine.items()] + [["load average at end", load_after]],
    )
    doc.add(
        "The servers: `pullwake server` on a SQLite file (WAL, `synchronous=NORMAL`) or on a "
        "throwaway PostgreSQL cluster started like the tests' one (`fsync=off`, "
        "`synchronous_commit=off`: durability off on both sides of the comparison), on asyncio "
        "(`--backend asyncio`: uvicorn with httptools) or on trio (`--backend trio`: hypercorn "
        "on trio); and the reference server `@durable-streams/server` in memory (Node, no "
        "backend: only the runner changes in its trio column). The runner is "
        "`pullwake.runtime.Runner` with default settings (no custom transport), on the same "
        "backend as the server, the same against all three servers.",
        "",
    )

    doc.add("## Summary: the targets of issue 12", "")
    doc.targets(issue_targets())
    doc.add(
        "10,000 idle runners' wake streams on one server process (issue 12 asks for the "
        f"figures, with no bound): server RSS {doc.cell('connections.10000.rss')}, keepalive "
        f"CPU {doc.cell('connections.10000.cpu')} (the [connection scale](#connection-scale) "
        "table).",
        "",
        "Earlier targets that still hold:",
        "",
    )
    doc.targets(earlier_targets())

    doc.add(
        "## Wake latency",
        "",
        "Append → handler starts (the runner has read the wake over SSE and claimed the "
        "subscription); one runner, one subscription, one append at a time, each after the "
        "previous ack. Floor: one bare HTTP exchange over loopback (raw blocking sockets on "
        "both sides); a wake needs at least two exchanges and an SSE push. For scale, the same "
        f"exchange through httpx: {doc.cell('floor.httpx.p50')} at p50.",
        "",
    )
    header = ["", *(column_title(s, b) for s, b in COLUMNS), "floor: loopback round trip"]
    doc.matrix(
        [
            ("p50", [f"latency.{s}.{b}.p50" for s, b in COLUMNS] + ["floor.raw.p50"]),
            ("p99", [f"latency.{s}.{b}.p99" for s, b in COLUMNS] + ["floor.raw.p99"]),
            (
                "parts (p50): the append's round trip",
                [f"latency.{s}.{b}.append" for s, b in COLUMNS] + [""],
            ),
            (
                "parts (p50): append answered → handler start",
                [f"latency.{s}.{b}.after_append" for s, b in COLUMNS] + [""],
            ),
        ],
        header,
    )

    doc.add(
        "## Throughput and CPU per cycle",
        "",
        "Complete cycles (append → wake → claim → handler → ack `done`) per second; each "
        "subscription has a closed-loop producer in the benchmark process (append, wait for "
        "the handler, append again). One runner process (`bench/runner_app.py`, default "
        "settings) whose CPU is its own. The pullwake server's CPU does not include "
        "PostgreSQL's own processes: those have their own rows (the postmaster and its "
        "children, from `/proc/<pid>/stat`).",
        "",
    )
    rows: list[tuple[str, list[str]]] = []
    for lanes in (1, 8):
        base = [f"throughput.{s}.{b}.{lanes}" for s, b in COLUMNS]
        rows += [
            (f"{lanes} subscription(s): cycles/s", base),
            (f"{lanes}: server CPU per cycle", [k + ".server_cycle" for k in base]),
            (f"{lanes}: PostgreSQL's processes per cycle", [k + ".pg_cycle" for k in base]),
            (f"{lanes}: runner CPU per cycle", [k + ".runner_cycle" for k in base]),
            (f"{lanes}: server CPU", [k + ".server_cpu" for k in base]),
            (f"{lanes}: runner process CPU", [k + ".runner_cpu" for k in base]),
            (f"{lanes}: producers' CPU (benchmark process)", [k + ".producer_cpu" for k in base]),
        ]
    doc.matrix(rows, ["", *(column_title(s, b) for s, b in COLUMNS)])
    doc.add(
        "Server CPU per request, one request at a time (`bench/server_cost.py`): pullwake on "
        "uvicorn (asyncio), on hypercorn (asyncio), and on trio (hypercorn), the reference "
        "server, and a bare ASGI app on each HTTP server (asyncio), the floor under anything "
        "built on it:",
        "",
    )
    cost_columns = [
        ("sqlite", "pullwake, SQLite, uvicorn"),
        ("sqlite_hypercorn", "pullwake, SQLite, hypercorn (asyncio)"),
        ("sqlite_trio", "pullwake, SQLite, trio"),
        ("reference", "reference server (Node)"),
        ("bare_uvicorn", "bare ASGI app, uvicorn"),
        ("bare_hypercorn", "bare ASGI app, hypercorn"),
    ]
    doc.matrix(
        [
            ("`HEAD` a stream", [f"server_cost.{k}.head" for k, _ in cost_columns]),
            (
                "append one message",
                [f"server_cost.{k}.post" if "bare" not in k else "" for k, _ in cost_columns],
            ),
        ],
        ["", *(t for _, t in cost_columns)],
    )

    doc.add("## asyncio and trio", "", "Target: trio within 20 % of asyncio on every figure.", "")
    doc.trio_table()

    doc.add(
        "## Scaling",
        "",
        "SQLite and PostgreSQL on asyncio: cycles/s and CPU per cycle with more subscriptions "
        "on one runner process, and with 64 subscriptions spread over more runner processes "
        "(each on a wake stream of its own). The 1- and 8-subscription rows are the "
        "throughput matrix's; the 64-subscription row is also the one-process row.",
        "",
    )
    for server in ("sqlite", "postgres"):
        scale_rows: list[tuple[str, list[str]]] = []
        for lanes in (1, 8, 64, 512):
            key = (
                f"throughput.{server}.asyncio.{lanes}"
                if lanes in (1, 8)
                else f"scale.{server}.subs{lanes}"
            )
            scale_rows.append((f"{lanes} subscription(s), 1 runner process", _scale_keys(key)))
        for procs in (4, 16):
            key = f"scale.{server}.procs{procs}"
            scale_rows.append((f"64 subscriptions, {procs} runner processes", _scale_keys(key)))
        doc.add(f"{SERVER_TITLES[server]}:", "")
        header = ["", "cycles/s", "server CPU per cycle", "runner CPU per cycle"]
        if server == "postgres":
            header.append("PostgreSQL's processes per cycle")
        doc.matrix(
            [(label, keys if server == "postgres" else keys[:3]) for label, keys in scale_rows],
            header,
        )

    doc.add(
        "## Profile: CPU per cycle by component",
        "",
        "py-spy (`.venv/bin/py-spy record --format raw`) attached to the server and to the "
        "runner process during an 8-subscription throughput run; each sample goes to the "
        "component of its innermost frame's file (`bench/breakdown.py`: httpx, uvicorn, "
        "starlette, anyio, pullwake.server.store, ...). Samples waiting in `epoll` or on a "
        "condition are left out; a worker thread inside SQLite's C code counts as "
        "pullwake.server.store (the line that called it), and so does one sleeping in "
        "SQLite's busy handler while another connection writes. The µs column is the share times "
        "the CPU per cycle of the same configuration in the throughput matrix. Samples are of "
        "wall time on running threads: on a busy machine a thread waiting for a core counts "
        "where it stands, so read the shares as a ranking.",
        "",
    )
    profiles = results.get("throughput.py", {}).get("profiles", {})
    if profiles:
        profile_tables(doc, profiles)
    else:
        doc.add("Not run.", "")

    doc.add(
        "## Connection scale",
        "",
        "N idle SSE readers (raw sockets, each on its own wake stream, as idle runners hold "
        "them) on one `pullwake server` process (SQLite, asyncio, 3 s keepalive). CPU is "
        "measured over windows of one keepalive interval with nothing else happening; reach "
        "is from an append to one reader (chosen at random) receiving the data event.",
        "",
    )
    levels = sorted({int(k.split(".")[1]) for k in figures if k.startswith("connections.")}) or [
        0,
        1000,
        5000,
        10000,
    ]
    doc.matrix(
        [
            (
                f"{level:,} readers" if level else "no reader (baseline)",
                [
                    f"connections.{level}.rss",
                    f"connections.{level}.cpu",
                    f"connections.{level}.reach" if level else "",
                ],
            )
            for level in levels
        ],
        ["", "server RSS", "server CPU (keepalives)", "append → one reader"],
    )

    doc.add(
        "## Failure detection and recovery",
        "",
        "Detection: from the fault to the runner leaving `streaming` (SIGKILL, silent server) "
        "or from the start of a hung connect to its abort. Reconnect: from the server's return "
        "to the runner streaming again. *Default* is `RunnerSettings()`; *heartbeat-only* "
        "models the runner this project replaces: `RunnerSettings(heartbeat_interval=30, "
        "failures_before_reset=2, timeouts=Timeouts(read=3600), "
        "reconnect_probe_interval=None)` — a heartbeat every 30 s (each bounded by 30 s), two "
        "failures in a row reset the stream, no silence detection on the wake stream, and no "
        "faster probing while reconnecting.",
        "",
    )
    fault_rows = []
    for fault, title in (
        ("sigkill", "server SIGKILL"),
        ("silent", "silent server (SIGSTOP)"),
        ("hung", "hung connect (blackholing proxy)"),
    ):
        for what in ("detect", "reconnect"):
            label = f"{title}: {'detection' if what == 'detect' else 'reconnect'}"
            fault_rows.append(
                (
                    label,
                    [f"failures.{fault}.default.{what}", f"failures.{fault}.heartbeat-only.{what}"],
                )
            )
    doc.matrix(fault_rows, ["", "default settings", "heartbeat-only (30 s, 2 failures)"])

    doc.add("## Runner cost", "")
    doc.matrix(
        [
            ("idle runner: CPU", ["runner.asyncio.idle.cpu", "runner.trio.idle.cpu"]),
            ("idle runner: RSS", ["runner.asyncio.idle.rss", "runner.trio.idle.rss"]),
            (
                "runner CPU per wake, one at a time (SSE read, claim, handler call, ack)",
                ["runner.asyncio.wake.cpu", "runner.trio.wake.cpu"],
            ),
            ("lifecycle chart alone, per event", ["chart.event", "chart.event"]),
            ("actor, per event", ["actor.asyncio.event", "actor.trio.event"]),
        ],
        ["", "asyncio", "trio"],
    )

    doc.add("## Commands and notes", "")
    for script in SCRIPTS:
        data = results.get(script)
        took = timing.get(script)
        if data is None:
            state = "not run" if took is None else f"**failed** after {took:.0f} s"
            doc.add(f"- `bench/{script}`: {state}")
            continue
        doc.add(f"- `{data['command']}` ({took:.0f} s)")
        for note in data.get("notes", []):
            doc.add(f"  - {note}")
    doc.add("")

    analysis = HERE / "analysis.md"
    if analysis.exists():
        doc.add(analysis.read_text().rstrip(), "")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(doc.lines).rstrip() + "\n")


def _scale_keys(key: str) -> list[str]:
    return [key, f"{key}.server_cycle", f"{key}.runner_cycle", f"{key}.pg_cycle"]


def run_scripts(chosen: list[str], results_dir: Path, quick: bool) -> list[str]:
    """Run each script, saving its figures in ``results_dir``; return the ones that failed."""
    failed = []
    timing: dict[str, float] = {}
    machine = describe()
    for script in chosen:
        print(f"== {script}", flush=True)
        json_path = results_dir / f"{script}.json"
        json_path.unlink(missing_ok=True)
        t0 = time.perf_counter()
        command = [sys.executable, str(HERE / script), "--json", str(json_path)]
        if quick:
            command.append("--quick")
        status = subprocess.call(command, cwd=REPO_ROOT)
        timing[script] = time.perf_counter() - t0
        if status != 0 or not json_path.exists():
            failed.append(script)
            print(f"!! {script} failed with status {status}", flush=True)
    try:
        load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load_after = "unknown"
    run = {
        "machine": machine,
        "timing": timing,
        "load_after": load_after,
        "scripts": chosen,
        "quick": quick,
    }
    (results_dir / "run.json").write_text(json.dumps(run, indent=1))
    return failed


def render(results_dir: Path, out: Path) -> None:
    """Write the document from the figures saved in ``results_dir``."""
    run = json.loads((results_dir / "run.json").read_text())
    results: dict[str, dict[str, Any]] = {}
    figures: Figures = {}
    for script in run["scripts"]:
        json_path = results_dir / f"{script}.json"
        if json_path.exists():
            data, found = load(json_path)
            results[script] = data
            figures.update({f.key: f for f in found})
    write_document(
        out,
        run["machine"],
        results,
        figures,
        run["timing"],
        run["load_after"],
        bool(run.get("quick")),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scripts", help="comma-separated subset of: " + ", ".join(SCRIPTS))
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run of every section (2 runs per figure, short windows); the document "
        "says so at the top",
    )
    parser.add_argument(
        "--out",
        help="where to write the document (default: docs/performance.md; with --scripts, "
        "nothing is written unless --out is given)",
    )
    parser.add_argument(
        "--results",
        help="keep the figures (JSON) in this folder (default: a temporary one)",
    )
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="run nothing: write the document from the figures kept by an earlier --results",
    )
    args = parser.parse_args()
    chosen = SCRIPTS
    out: Path | None = Path(args.out) if args.out else REPO_ROOT / "docs" / "performance.md"
    if args.scripts:
        out = Path(args.out) if args.out else None
        chosen = [s if s.endswith(".py") else f"{s}.py" for s in args.scripts.split(",")]
        unknown = sorted(set(chosen) - set(SCRIPTS))
        if unknown:
            parser.error(f"unknown scripts {unknown}; choose from {SCRIPTS}")
    if args.render_only:
        if not args.results or out is None:
            parser.error("--render-only needs --results DIR (and no --scripts without --out)")
        render(Path(args.results), out)
        print(f"== wrote {out}", flush=True)
        return 0
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if args.results:
            results_dir = Path(args.results)
            results_dir.mkdir(parents=True, exist_ok=True)
        else:
            results_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        failed = run_scripts(chosen, results_dir, args.quick)
        elapsed = time.perf_counter() - started
        if out is not None:
            render(results_dir, out)
            print(f"== wrote {out} ({elapsed:.0f} s in all)", flush=True)
        else:
            print(f"== {elapsed:.0f} s in all (a subset: no document written)", flush=True)
    budget = QUICK_BUDGET if args.quick else BUDGET
    if elapsed > budget:
        print(f"!! the suite took {elapsed:.0f} s, over its {budget:.0f} s budget", flush=True)
    if failed:
        print(f"!! failed: {', '.join(failed)}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
