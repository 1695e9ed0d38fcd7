"""Hold benchmark figures: runs, median and spread, printed for people and saved as JSON.

Every benchmark script measures each figure in several independent runs (five unless told
otherwise) and reports the median with the spread (lowest..highest run). A script prints its
figures as it goes and, given ``--json PATH``, also saves them so ``bench/run.py`` can write
``docs/performance.md`` from one run of the whole suite.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

__all__ = ["Figure", "Report", "arguments", "parse", "percentile"]

RUNS = 5
#: Runs per figure under ``--quick`` (a smoke run of every section: figures, not verdicts).
QUICK_RUNS = 2


def percentile(samples: Sequence[float], q: float) -> float:
    """Return the ``q``-th percentile (0..100) of ``samples`` (nearest rank)."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@attrs.define
class Figure:
    """One measured quantity: its runs, and how to show it."""

    key: str
    label: str
    unit: str
    runs: list[float]
    #: How many decimals to show.
    digits: int = 1
    note: str = ""

    @property
    def median(self) -> float:
        good = [r for r in self.runs if not math.isnan(r)]
        return statistics.median(good) if good else math.nan

    @property
    def low(self) -> float:
        good = [r for r in self.runs if not math.isnan(r)]
        return min(good) if good else math.nan

    @property
    def high(self) -> float:
        good = [r for r in self.runs if not math.isnan(r)]
        return max(good) if good else math.nan

    def show(self, value: float) -> str:
        if math.isnan(value):
            return "n/a"
        return f"{value:,.{self.digits}f}"

    def text(self) -> str:
        """Return ``median unit (low..high, n runs)``."""
        if not self.runs or math.isnan(self.median):
            return "n/a"
        spread = f"{self.show(self.low)}..{self.show(self.high)}"
        return f"{self.show(self.median)} {self.unit} ({spread}, {len(self.runs)} runs)"

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "unit": self.unit,
            "runs": [None if math.isnan(r) else r for r in self.runs],
            "digits": self.digits,
            "note": self.note,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Figure:
        runs = [math.nan if r is None else float(r) for r in data["runs"]]
        return cls(
            data["key"], data["label"], data["unit"], runs, data["digits"], data.get("note", "")
        )


class Report:
    """The figures of one script: printed as they come, saved as JSON at the end."""

    def __init__(self, script: str, args: argparse.Namespace) -> None:
        self.script = script
        shown = [f"bench/{script}"]
        argv = iter(sys.argv[1:])
        for arg in argv:
            if arg == "--json":
                next(argv, None)
            elif not arg.startswith("--json="):
                shown.append(arg)
        self.command = ".venv/bin/python " + " ".join(shlex.quote(a) for a in shown)
        self.json_path: str | None = args.json
        self.figures: list[Figure] = []
        self.notes: list[str] = []
        #: Anything else the script wants bench/run.py to have (saved as JSON as it is).
        self.extra: dict[str, Any] = {}
        print(f"$ {self.command}", flush=True)

    def add(
        self,
        key: str,
        label: str,
        unit: str,
        runs: Sequence[float],
        *,
        digits: int = 1,
        note: str = "",
    ) -> Figure:
        figure = Figure(key, label, unit, list(runs), digits, note)
        self.figures.append(figure)
        print(f"  {label:<58} {figure.text()}", flush=True)
        return figure

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def save(self) -> None:
        if self.json_path is None:
            return
        data = {
            "script": self.script,
            "command": self.command,
            "figures": [f.as_json() for f in self.figures],
            "notes": self.notes,
            **self.extra,
        }
        tmp = f"{self.json_path}.tmp"
        with open(tmp, "w") as out:
            json.dump(data, out, indent=1)
        os.replace(tmp, self.json_path)


def arguments(description: str, runs: int = RUNS) -> argparse.ArgumentParser:
    """Return the argument parser every benchmark script shares (``--runs``, ``--json``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.set_defaults(default_runs=runs)
    parser.add_argument(
        "--runs",
        type=int,
        default=None,
        help=f"independent runs per figure (default: {runs}; {QUICK_RUNS} with --quick)",
    )
    parser.add_argument("--json", help="also save the figures to this JSON file (bench/run.py)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run: {QUICK_RUNS} runs per figure unless --runs is given, shorter "
        "windows and fewer samples (proves every section runs; quote no figure from it)",
    )
    return parser


def parse(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse the command line; ``--quick`` lowers the default number of runs."""
    args = parser.parse_args()
    if args.runs is None:
        args.runs = QUICK_RUNS if args.quick else args.default_runs
    return args


def load(path: Path) -> tuple[dict[str, Any], list[Figure]]:
    data = json.loads(path.read_text())
    return data, [Figure.from_json(f) for f in data["figures"]]
