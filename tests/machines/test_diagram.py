"""Diagrams: deterministic Mermaid and DOT, highlighting, the CLI, SVG, and the docs' drift."""

from __future__ import annotations

import difflib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pullwake.cli import main
from pullwake.diagrams import REGENERATE, load_spec, svg, write_docs
from pullwake.machines import LIFECYCLE, Activity, ChartSpec, DiagramError, UnknownStateError
from pullwake.machines.diagram import (
    COMPOUND_ACTIVE_FILL,
    DOC_BLOCKS,
    doc_blocks,
    dot,
    mermaid,
    update_doc,
)

from .charts import KETTLE

ROOT = Path(__file__).parents[2]
LIFECYCLE_DOC = ROOT / "docs" / "lifecycle.md"
HAS_GRAPHVIZ = shutil.which("dot") is not None


def chart_edges(spec: ChartSpec) -> set[tuple[str, str, str]]:
    """(source, target, event) for every transition the chart declares with an event."""
    return {
        (t.source.id, target.id, event.id)
        for state in spec.chart.states_map.values()
        for t in state.transitions
        for target in t.targets
        for event in t.events
    }


def run_in_subprocess(*args: str) -> bytes:
    completed = subprocess.run(
        [sys.executable, "-m", "pullwake.diagrams", *args],
        capture_output=True,
        check=True,
        timeout=30,
    )
    return completed.stdout


# -- Mermaid ---------------------------------------------------------------------------------


def test_mermaid_draws_every_transition_with_its_event_id() -> None:
    text = mermaid(LIFECYCLE)
    edges = set(re.findall(r"^\s*(\w+) --> (\w+) : (\w+)$", text, re.M))
    assert edges == chart_edges(LIFECYCLE)
    assert "[*] --> stopped" in text
    assert "[*] --> connecting" in text


def test_mermaid_lists_the_activity_table() -> None:
    text = mermaid(LIFECYCLE)
    assert 'state "running (do / heartbeat)" as running {' in text
    assert 'state "reconnecting (do / backoff)" as reconnecting {' in text
    for state, activity in [
        ("connecting", "connect"),
        ("streaming", "read_stream"),
        ("server_gone", "probe"),
        ("stopping", "drain"),
    ]:
        # Declared first, so Mermaid shows the name above the activity, not instead of it.
        declared = rf'^( +)state "{state}" as {state}\n\1{state} : do / {activity}$'
        assert re.search(declared, text, re.M), state
    assert 'state "stopped"' not in text


def test_mermaid_has_no_highlight_and_no_humanised_names_by_default() -> None:
    text = mermaid(LIFECYCLE)
    assert "classDef" not in text
    assert highlights(text) == []
    assert "Connect failed" not in text
    assert '"Stopped"' not in text


def highlights(text: str) -> list[tuple[str, str]]:
    return re.findall(r"^    class (\w+) (\w+)$", text, re.M)


def test_mermaid_highlights_a_leaf_and_tints_its_ancestors() -> None:
    text = mermaid(LIFECYCLE, active="streaming")
    assert highlights(text) == [("running", "activeCompound"), ("streaming", "active")]
    assert "    classDef active fill:" in text
    assert "    classDef activeCompound fill:" in text
    # The renderer's own "X:::active" form does not take effect in current Mermaid.
    assert ":::" not in text


def test_mermaid_highlights_a_compound_state_alone() -> None:
    text = mermaid(LIFECYCLE, active="running")
    assert highlights(text) == [("running", "activeCompound")]


def test_mermaid_highlights_a_top_level_leaf() -> None:
    assert highlights(mermaid(LIFECYCLE, active="stopping")) == [("stopping", "active")]


def test_mermaid_is_the_same_on_every_run() -> None:
    assert mermaid(LIFECYCLE) == mermaid(LIFECYCLE)
    assert run_in_subprocess() == run_in_subprocess() == mermaid(LIFECYCLE).encode()


# -- DOT -------------------------------------------------------------------------------------


def test_dot_is_the_same_on_every_run() -> None:
    source = dot(LIFECYCLE, active="running")
    assert source == dot(LIFECYCLE, active="running")
    # The renderer names helper nodes after id() of Python objects; none may leak through.
    assert not re.search(r"\d{5,}", source)
    assert run_in_subprocess("--format", "dot") == run_in_subprocess("--format", "dot")
    assert run_in_subprocess("--format", "dot") == dot(LIFECYCLE).encode()


def test_dot_draws_every_transition_and_activity() -> None:
    source = dot(LIFECYCLE)
    for _source, _target, event in chart_edges(LIFECYCLE):
        assert f">{event}</font>" in source
    for owned in LIFECYCLE.activities.values():
        for activity in owned:
            assert f"do / {activity.name}" in source
    assert "fillcolor=turquoise" not in source


def node_fill(source: str, node: str) -> str:
    match = re.search(rf"^{node} \[.*?fillcolor=(\w+)", source, re.M)
    assert match, f"no node {node} in the DOT source"
    return match.group(1)


def test_dot_highlights_a_leaf() -> None:
    source = dot(LIFECYCLE, active="streaming")
    assert node_fill(source, "streaming") == "turquoise"
    assert node_fill(source, "connecting") == "white"
    assert node_fill(source, "stopped") == "white"


def test_dot_highlights_a_compound_state_as_a_tinted_box() -> None:
    source = dot(LIFECYCLE, active="running")
    cluster = source.split("subgraph cluster_running {", 1)[1].split("subgraph", 1)[0]
    assert f'fillcolor="{COMPOUND_ACTIVE_FILL}"' in cluster
    assert node_fill(source, "connecting") == "white"
    assert COMPOUND_ACTIVE_FILL not in dot(LIFECYCLE, active="stopping")


def test_an_unknown_active_state_is_an_error_naming_the_states() -> None:
    with pytest.raises(UnknownStateError, match="no state 'sleeping'; declared states"):
        mermaid(LIFECYCLE, active="sleeping")


# -- the command line ------------------------------------------------------------------------


def test_the_cli_prints_mermaid_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagram"]) == 0
    assert capsys.readouterr().out == mermaid(LIFECYCLE)


def test_the_cli_draws_a_named_chart_as_dot_with_a_highlight(
    capsys: pytest.CaptureFixture[str],
) -> None:
    chart = "tests.machines.charts:KETTLE"
    assert main(["diagram", chart, "--format", "dot", "--active", "warm"]) == 0
    assert capsys.readouterr().out == dot(KETTLE, active="warm")


def test_the_cli_writes_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "lifecycle.mmd"
    assert main(["diagram", "--active", "reconnecting", "-o", str(out)]) == 0
    assert out.read_text() == mermaid(LIFECYCLE, active="reconnecting")
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["diagram", "--active", "sleeping"], "declares no state 'sleeping'"),
        (["diagram", "lifecycle"], "is not 'module:attribute'"),
        (["diagram", "pullwake.nowhere:SPEC"], "cannot import module 'pullwake.nowhere'"),
        (["diagram", "pullwake.machines:NOTHING"], "has no attribute 'NOTHING'"),
        (["diagram", "pullwake.machines:Lifecycle"], "not a ChartSpec"),
    ],
)
def test_the_cli_reports_errors_and_exits_non_zero(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err


def test_load_spec_returns_the_named_spec() -> None:
    assert load_spec("pullwake.machines.lifecycle:LIFECYCLE") is LIFECYCLE


# -- SVG -------------------------------------------------------------------------------------


def test_svg_without_graphviz_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no `dot` anywhere
    with pytest.raises(DiagramError, match="apt-get install graphviz"):
        svg(LIFECYCLE)
    out = tmp_path / "lifecycle.svg"
    assert main(["diagram", "--format", "svg", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "apt-get install graphviz" in err
    assert "brew install graphviz" in err
    assert not out.exists()


@pytest.mark.skipif(not HAS_GRAPHVIZ, reason="Graphviz `dot` is not installed")
def test_svg_with_graphviz_draws_the_chart(tmp_path: Path) -> None:
    out = tmp_path / "lifecycle.svg"
    assert main(["diagram", "--format", "svg", "--active", "streaming", "-o", str(out)]) == 0
    drawing = out.read_text()
    assert drawing.lstrip().startswith("<?xml")
    assert "<svg" in drawing
    for state in LIFECYCLE.states():
        assert f">{state}</text>" in drawing
    assert 'fill="turquoise"' in drawing


# -- the generated parts of docs/lifecycle.md ------------------------------------------------


def test_docs_lifecycle_matches_the_chart() -> None:
    text = LIFECYCLE_DOC.read_text(encoding="utf-8")
    assert sorted(doc_blocks(text)) == sorted(DOC_BLOCKS), (
        "docs/lifecycle.md should hold one generated block of each kind"
    )
    expected = update_doc(text, LIFECYCLE)
    if expected != text:
        diff = "".join(
            difflib.unified_diff(
                text.splitlines(keepends=True),
                expected.splitlines(keepends=True),
                "docs/lifecycle.md",
                "generated from LIFECYCLE",
            )
        )
        pytest.fail(
            "docs/lifecycle.md is out of date with the lifecycle chart; regenerate it with\n"
            f"    {REGENERATE.format(path='docs/lifecycle.md')}\n\n{diff}"
        )


def test_write_docs_regenerates_only_the_blocks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = tmp_path / "chart.md"
    doc.write_text(
        "# Kettle\n\nhand-written\n\n"
        "<!-- pullwake-diagram:begin mermaid -->\nstale\n<!-- pullwake-diagram:end mermaid -->\n"
        "\nmore prose\n"
        "<!-- pullwake-diagram:begin ignored -->\n<!-- pullwake-diagram:end ignored -->\n"
    )
    chart = "tests.machines.charts:KETTLE"
    assert main(["diagram", chart, "--write-docs", str(doc)]) == 0
    assert capsys.readouterr().out == f"{doc}: updated\n"
    text = doc.read_text()
    assert text.startswith("# Kettle\n\nhand-written\n\n")
    assert "```mermaid\n" + mermaid(KETTLE) + "```\n" in text
    assert "| `off` | `boiled`, `cooled`, `switch_off` |" in text
    assert "\nmore prose\n" in text
    assert "stale" not in text
    assert main(["diagram", chart, "--write-docs", str(doc)]) == 0
    assert capsys.readouterr().out == f"{doc}: already up to date\n"


def test_write_docs_refuses_a_file_without_blocks(tmp_path: Path) -> None:
    doc = tmp_path / "empty.md"
    doc.write_text("# nothing generated here\n")
    with pytest.raises(DiagramError, match="no '<!-- pullwake-diagram:begin KIND -->' block"):
        write_docs(doc, LIFECYCLE)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "<!-- pullwake-diagram:begin table -->\n<!-- pullwake-diagram:end table -->\n",
            "unknown generated block 'table'",
        ),
        ("<!-- pullwake-diagram:begin mermaid -->\nno end\n", "unpaired"),
        (
            "<!-- pullwake-diagram:begin mermaid -->\n<!-- pullwake-diagram:end matrix -->\n",
            "unpaired",
        ),
    ],
)
def test_malformed_blocks_are_errors(text: str, message: str) -> None:
    with pytest.raises(DiagramError, match=message):
        update_doc(text, LIFECYCLE)


def test_activity_table_reads_the_spec() -> None:
    spec = ChartSpec(
        KETTLE.chart,
        {**KETTLE.activities, "off": (Activity("standby_light"),)},
        KETTLE.ignored,
    )
    table = DOC_BLOCKS["activities"](spec)
    assert "| `off` | `standby_light` | runs until the state is left |" in table
    assert "| `heating` | `heat` | `boiled` | the error stops the runner |" in table


def test_the_regeneration_command_works(tmp_path: Path) -> None:
    doc = tmp_path / "lifecycle.md"
    text = LIFECYCLE_DOC.read_text(encoding="utf-8")
    stale = text.replace("| `start` | connecting |", "| `start` | stopping |", 1)
    assert stale != text
    doc.write_text(stale)
    command = REGENERATE.format(path=doc).split()
    assert command[:2] == ["python", "-m"]
    subprocess.run([sys.executable, *command[1:]], check=True, timeout=30, env=os.environ)
    assert doc.read_text(encoding="utf-8") == text


def test_the_cli_finds_a_chart_in_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "pullwake_test_door.py").write_text(
        "from statemachine import State, StateChart\n"
        "from pullwake.machines import Activity, ChartSpec\n"
        "class Door(StateChart):\n"
        "    allow_event_without_transition = False\n"
        "    closed = State(initial=True)\n"
        "    opened = State()\n"
        "    open = closed.to(opened)\n"
        "    shut = opened.to(closed)\n"
        "    def on_enter_closed(self):\n"
        "        pass\n"
        "DOOR = ChartSpec(Door, {'opened': (Activity('alarm'),)},\n"
        "                 {'closed': frozenset({'shut'}), 'opened': frozenset({'open'})})\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "pullwake_test_door", raising=False)
    path_before = list(sys.path)
    assert main(["diagram", "pullwake_test_door:DOOR"]) == 0
    assert sys.path == path_before
    out = capsys.readouterr().out
    # The chart's own entry action is kept, before the activity from the spec's table.
    assert "    closed : entry / on_enter_closed\n" in out
    assert "    opened : do / alarm\n" in out
    assert "    closed --> opened : open\n" in out
