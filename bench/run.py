"""Run every benchmark script and write ``docs/performance.md`` (``make bench``).

Each script in :data:`SCRIPTS` runs in its own process, one after another (so no benchmark
disturbs another), prints its figures as it goes and saves them as JSON. Then this module
writes ``docs/performance.md``: the machine and versions, the command of each script, every
figure as the median of its runs with the spread, the servers side by side with the floor,
each target of issue 6 marked met or missed (with the reason when missed), and, after the
generated part, the hand-written analysis kept in ``bench/analysis.md``.

``--scripts latency,floor`` runs a subset and writes no document unless ``--out PATH`` is given
(it then shows "not run" for the rest); ``--out PATH`` writes somewhere else. ``--results DIR``
keeps the figures as JSON, and ``--render-only --results DIR`` writes the document again from
them without measuring (after editing ``bench/analysis.md``). The exit status is 1 when a
script failed.
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

import attrs
from figures import Figure, load
from machine import describe
from servers import REPO_ROOT

HERE = Path(__file__).parent
SCRIPTS = [
    "chart_actor.py",
    "floor.py",
    "latency.py",
    "throughput.py",
    "server_cost.py",
    "connections.py",
    "failures.py",
    "runner_cost.py",
]
BUDGET = 600.0


@attrs.frozen
class Target:
    """A target of issue 6: which figure, the bound, and why it is missed when it is."""

    text: str
    key: str
    #: Returns True when the value meets the target.
    check: Callable[[float, dict[str, Figure]], bool]
    reason: str
    #: When set, the key of the figure the value is compared with (shown in the table).
    versus: str | None = None


def at_most(bound: float) -> Callable[[float, dict[str, Figure]], bool]:
    return lambda value, _: value <= bound


def at_least(bound: float) -> Callable[[float, dict[str, Figure]], bool]:
    return lambda value, _: value >= bound


def not_slower_than(key: str) -> Callable[[float, dict[str, Figure]], bool]:
    return lambda value, figures: key in figures and value <= figures[key].median


def not_below(key: str) -> Callable[[float, dict[str, Figure]], bool]:
    return lambda value, figures: key in figures and value >= figures[key].median


WHY_LATENCY = (
    "the runner's own share (the reference column: the runner's HTTP client alone costs over "
    "a millisecond per exchange here, see the floor) plus pullwake's server CPU for the "
    "append, the SSE push and the claim; see [the analysis](#analysis-wake-latency)"
)
WHY_REFERENCE = (
    "the reference server (Node, in memory) spends a fraction of the CPU per request that "
    "pullwake's server does (the server-CPU table); see [the analysis](#analysis-throughput)"
)
WHY_THROUGHPUT = (
    "CPU per cycle: the server's ceiling row (a whole core to itself) and the runner's own "
    "cost per wake are both far from 1 ms on this machine; see "
    "[the analysis](#analysis-throughput)"
)
WHY_KEEPALIVE = (
    "keepalive writes through the ASGI stack; see [the analysis](#analysis-connection-scale)"
)
WHY_RECONNECT = (
    "the reconnect depends on when the runner's next probe lands; see "
    "[the analysis](#analysis-failure-detection-and-recovery)"
)
WHY_SILENT = (
    "silence is counted from the last byte, up to one keepalive before the fault; see "
    "[the analysis](#analysis-failure-detection-and-recovery)"
)
WHY_RUNNER = "see [the analysis](#analysis-runner-cost)"

TARGETS = [
    Target("wake latency p50 ≤ 3 ms (SQLite)", "latency.sqlite.p50", at_most(3.0), WHY_LATENCY),
    Target(
        "wake latency p50 ≤ 5 ms (PostgreSQL)",
        "latency.postgres.p50",
        at_most(5.0),
        WHY_LATENCY,
    ),
    Target("wake latency p99 ≤ 15 ms (SQLite)", "latency.sqlite.p99", at_most(15.0), WHY_LATENCY),
    Target(
        "wake latency p99 ≤ 15 ms (PostgreSQL)",
        "latency.postgres.p99",
        at_most(15.0),
        WHY_LATENCY,
    ),
    Target(
        "p50 not slower than the reference (SQLite)",
        "latency.sqlite.p50",
        not_slower_than("latency.reference.p50"),
        WHY_REFERENCE,
        versus="latency.reference.p50",
    ),
    Target(
        "p50 not slower than the reference (PostgreSQL)",
        "latency.postgres.p50",
        not_slower_than("latency.reference.p50"),
        WHY_REFERENCE,
        versus="latency.reference.p50",
    ),
    Target(
        "p99 not slower than the reference (SQLite)",
        "latency.sqlite.p99",
        not_slower_than("latency.reference.p99"),
        WHY_REFERENCE,
        versus="latency.reference.p99",
    ),
    Target(
        "p99 not slower than the reference (PostgreSQL)",
        "latency.postgres.p99",
        not_slower_than("latency.reference.p99"),
        WHY_REFERENCE,
        versus="latency.reference.p99",
    ),
    Target(
        "throughput ≥ 1,000 cycles/s, SQLite, 8 subscriptions",
        "throughput.sqlite.8",
        at_least(1000.0),
        WHY_THROUGHPUT,
    ),
    Target(
        "throughput not below the reference (8 subscriptions)",
        "throughput.sqlite.8",
        not_below("throughput.reference.8"),
        WHY_REFERENCE,
        versus="throughput.reference.8",
    ),
    Target(
        "throughput not below the reference (1 subscription)",
        "throughput.sqlite.1",
        not_below("throughput.reference.1"),
        WHY_REFERENCE,
        versus="throughput.reference.1",
    ),
    Target(
        "5,000 idle readers within 400 MB server RSS",
        "connections.5000.rss",
        at_most(400.0),
        "about 45 KB per open SSE response; see [the analysis](#analysis-connection-scale)",
    ),
    Target(
        "5,000 idle readers: keepalives under 15 % of a core",
        "connections.5000.cpu",
        at_most(15.0),
        WHY_KEEPALIVE,
    ),
    Target(
        "server SIGKILL detected in under 100 ms",
        "failures.sigkill.default.detect",
        at_most(100.0),
        "the kernel ends the killed server's connections at once; see "
        "[the analysis](#analysis-failure-detection-and-recovery)",
    ),
    Target(
        "silent server detected within three keepalive intervals (9 s)",
        "failures.silent.default.detect",
        at_most(9000.0),
        WHY_SILENT,
    ),
    Target(
        "reconnect within 1 s of the server returning (after SIGKILL)",
        "failures.sigkill.default.reconnect",
        at_most(1000.0),
        WHY_RECONNECT,
    ),
    Target(
        "reconnect within 1 s of the server returning (silent server)",
        "failures.silent.default.reconnect",
        at_most(1000.0),
        WHY_RECONNECT,
    ),
    Target(
        "reconnect within 1 s of the server returning (hung connect)",
        "failures.hung.default.reconnect",
        at_most(1000.0),
        WHY_RECONNECT,
    ),
    Target("idle runner under 1 % of a core", "runner.idle.cpu", at_most(1.0), WHY_RUNNER),
    Target("idle runner under 60 MB RSS", "runner.idle.rss", at_most(60.0), WHY_RUNNER),
]

SERVER_COLUMNS = ("sqlite", "postgres", "reference")
SERVER_HEADERS = ("pullwake, SQLite", "pullwake, PostgreSQL", "reference server (Node)")


class Document:
    """The generated Markdown, built line by line."""

    def __init__(self, figures: dict[str, Figure]) -> None:
        self.figures = figures
        self.lines: list[str] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

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

    def targets(self, targets: list[Target]) -> None:
        rows = []
        for target in targets:
            figure = self.figures.get(target.key)
            value = self.cell(target.key)
            if target.versus is not None:
                value += f" vs {self.cell(target.versus)}"
            if figure is None or not figure.runs or math.isnan(figure.median):
                rows.append([target.text, value, "not measured", ""])
                continue
            met = target.check(figure.median, self.figures)
            worst_ok = all(target.check(r, self.figures) for r in figure.runs if not math.isnan(r))
            if met and worst_ok:
                rows.append([target.text, value, "met", ""])
            elif met:
                rows.append([target.text, value, "met (median); some runs missed", target.reason])
            else:
                rows.append([target.text, value, "**missed**", target.reason])
        self.table(["target", "figure (median, spread)", "verdict", "reason"], rows)


def write_document(
    out: Path,
    machine: dict[str, str],
    results: dict[str, dict[str, object]],
    figures: dict[str, Figure],
    timing: dict[str, float],
    load_after: str,
) -> None:
    doc = Document(figures)
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    total = sum(timing.values())
    doc.add(
        "# Performance",
        "",
        "<!-- Generated by `make bench` (bench/run.py). Do not edit: the figures come from "
        "the run, the analysis from bench/analysis.md. -->",
        "",
        f"Measured by `make bench` on {now}, all in one run ({total:.0f} s) on one machine, so "
        "the ratios between columns hold even where absolute times drift. Every figure is the "
        "median of its runs (at least five), with the spread (lowest–highest run) in brackets. "
        "Each script runs alone: `.venv/bin/python bench/<script>.py` (commands below). "
        "Verdicts are taken on the median.",
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
        "The servers: `pullwake server` (asyncio, so uvicorn with httptools; defaults: 3 s "
        "keepalive) on a "
        "SQLite file (WAL, `synchronous=NORMAL`) or on a throwaway PostgreSQL cluster started "
        "like the tests' one (`fsync=off`, `synchronous_commit=off`: durability off on both "
        "sides of the comparison), and the reference server `@durable-streams/server` in "
        "memory. The runner is `pullwake.runtime.Runner` with default settings on asyncio, "
        "the same against all three.",
        "",
    )

    doc.add("## Summary: targets", "")
    doc.targets(TARGETS)

    doc.add(
        "## Wake latency",
        "",
        "Append → handler starts (the runner has read the wake over SSE and claimed the "
        "subscription); one runner, one subscription, one append at a time. Floor: one bare "
        "HTTP exchange over loopback (raw blocking sockets on both sides); a wake needs at "
        "least two exchanges and an SSE push. For scale, the same exchange through httpx, the "
        "runner's HTTP client: "
        f"{doc.cell('floor.httpx.p50')} at p50.",
        "",
    )
    doc.matrix(
        [
            ("p50", [f"latency.{s}.p50" for s in SERVER_COLUMNS] + ["floor.raw.p50"]),
            ("p99", [f"latency.{s}.p99" for s in SERVER_COLUMNS] + ["floor.raw.p99"]),
            (
                "parts (p50): the append's round trip",
                [f"latency.{s}.append" for s in SERVER_COLUMNS] + [""],
            ),
            (
                "parts (p50): append sent → claim sent",
                [f"latency.{s}.to_claim" for s in SERVER_COLUMNS] + [""],
            ),
            (
                "parts (p50): the claim's round trip",
                [f"latency.{s}.claim" for s in SERVER_COLUMNS] + [""],
            ),
        ],
        ["", *SERVER_HEADERS, "floor: loopback HTTP round trip"],
    )

    doc.add(
        "## Throughput",
        "",
        "Complete cycles (append → wake → claim → handler → ack `done`) per second; each "
        "subscription has a closed-loop producer (append, wait for the handler, append again). "
        "One runner process (`concurrency=8`); its CPU includes the producers (raw HTTP "
        "client). The pullwake server's CPU does not include PostgreSQL's own processes.",
        "",
    )
    rows: list[tuple[str, list[str]]] = []
    for lanes in (1, 8):
        rows.append(
            (
                f"{lanes} subscription(s): cycles/s",
                [f"throughput.{s}.{lanes}" for s in SERVER_COLUMNS],
            )
        )
        rows.append(
            (f"{lanes}: server CPU", [f"throughput.{s}.{lanes}.server_cpu" for s in SERVER_COLUMNS])
        )
        rows.append(
            (
                f"{lanes}: server CPU per cycle",
                [f"throughput.{s}.{lanes}.server_cycle" for s in SERVER_COLUMNS],
            )
        )
        rows.append(
            (
                f"{lanes}: server ceiling (a whole core)",
                [f"throughput.{s}.{lanes}.ceiling" for s in SERVER_COLUMNS],
            )
        )
        rows.append(
            (
                f"{lanes}: runner process CPU",
                [f"throughput.{s}.{lanes}.runner_cpu" for s in SERVER_COLUMNS],
            )
        )
    doc.matrix(rows, ["", *SERVER_HEADERS])
    doc.add(
        "Server CPU per request, one request at a time (`bench/server_cost.py`): pullwake on "
        "its asyncio HTTP server (uvicorn with httptools) and on hypercorn (its trio server, "
        "`--http hypercorn`), the reference server, and a bare ASGI app on each HTTP server, "
        "the floor under anything built on it:",
        "",
    )
    doc.matrix(
        [
            (
                "`HEAD` a stream",
                [
                    "server_cost.sqlite.head",
                    "server_cost.sqlite_hypercorn.head",
                    "server_cost.reference.head",
                    "server_cost.bare_uvicorn.head",
                    "server_cost.bare_hypercorn.head",
                ],
            ),
            (
                "append one message",
                [
                    "server_cost.sqlite.post",
                    "server_cost.sqlite_hypercorn.post",
                    "server_cost.reference.post",
                    "",
                    "",
                ],
            ),
        ],
        [
            "",
            "pullwake, SQLite (uvicorn)",
            "pullwake, SQLite, on hypercorn",
            "reference server (Node)",
            "bare ASGI app on uvicorn",
            "bare ASGI app on hypercorn",
        ],
    )

    doc.add(
        "## Connection scale",
        "",
        "N idle SSE readers (raw sockets, each on its own wake stream, as idle runners hold "
        "them) on one `pullwake server` process (SQLite, 3 s keepalive). CPU is measured over "
        "windows of one keepalive interval with nothing else happening; reach is from an "
        "append to one reader (chosen at random) receiving the data event.",
        "",
    )
    levels = sorted({int(k.split(".")[1]) for k in figures if k.startswith("connections.")}) or [
        0,
        1000,
        5000,
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
            ("idle runner: CPU", ["runner.idle.cpu"]),
            ("idle runner: RSS", ["runner.idle.rss"]),
            ("runner CPU per wake (SSE read, claim, handler call, ack)", ["runner.wake.cpu"]),
            ("lifecycle chart alone, per event", ["chart.event"]),
            ("actor on asyncio, per event", ["actor.asyncio.event"]),
            ("actor on trio, per event", ["actor.trio.event"]),
        ],
        ["", "figure"],
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
        for note in data.get("notes", []):  # type: ignore[union-attr]
            doc.add(f"  - {note}")
    doc.add("")

    analysis = HERE / "analysis.md"
    if analysis.exists():
        doc.add(analysis.read_text().rstrip(), "")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(doc.lines).rstrip() + "\n")


def run_scripts(chosen: list[str], results_dir: Path) -> list[str]:
    """Run each script, saving its figures in ``results_dir``; return the ones that failed."""
    failed = []
    timing: dict[str, float] = {}
    machine = describe()
    for script in chosen:
        print(f"== {script}", flush=True)
        json_path = results_dir / f"{script}.json"
        json_path.unlink(missing_ok=True)
        t0 = time.perf_counter()
        status = subprocess.call(
            [sys.executable, str(HERE / script), "--json", str(json_path)], cwd=REPO_ROOT
        )
        timing[script] = time.perf_counter() - t0
        if status != 0 or not json_path.exists():
            failed.append(script)
            print(f"!! {script} failed with status {status}", flush=True)
    try:
        load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load_after = "unknown"
    run = {"machine": machine, "timing": timing, "load_after": load_after, "scripts": chosen}
    (results_dir / "run.json").write_text(json.dumps(run, indent=1))
    return failed


def render(results_dir: Path, out: Path) -> None:
    """Write the document from the figures saved in ``results_dir``."""
    run = json.loads((results_dir / "run.json").read_text())
    results: dict[str, dict[str, object]] = {}
    figures: dict[str, Figure] = {}
    for script in run["scripts"]:
        json_path = results_dir / f"{script}.json"
        if json_path.exists():
            data, found = load(json_path)
            results[script] = data
            figures.update({f.key: f for f in found})
    write_document(out, run["machine"], results, figures, run["timing"], run["load_after"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scripts", help="comma-separated subset of: " + ", ".join(SCRIPTS))
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
        failed = run_scripts(chosen, results_dir)
        elapsed = time.perf_counter() - started
        if out is not None:
            render(results_dir, out)
            print(f"== wrote {out} ({elapsed:.0f} s in all)", flush=True)
        else:
            print(f"== {elapsed:.0f} s in all (a subset: no document written)", flush=True)
    if elapsed > BUDGET:
        print(f"!! the suite took {elapsed:.0f} s, over its {BUDGET:.0f} s budget", flush=True)
    if failed:
        print(f"!! failed: {', '.join(failed)}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
