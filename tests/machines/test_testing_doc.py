"""Run the example of docs/testing.md, so the page cannot drift from the API it shows."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest
from hypothesis.stateful import run_state_machine_as_test

from pullwake.machines import ChartDefinitionError, ChartSpec
from pullwake.machines.testing import TableMismatch, assert_table

DOC = Path(__file__).parents[2] / "docs" / "testing.md"


@pytest.fixture(scope="module")
def example() -> types.ModuleType:
    """Execute every ```python block of the page, in order, as one module."""
    blocks = re.findall(r"^```python\n(.*?)^```$", DOC.read_text(encoding="utf-8"), re.M | re.S)
    assert len(blocks) == 4, "docs/testing.md should hold four python blocks"
    module = types.ModuleType("docs_testing_example")
    exec(compile("\n".join(blocks), str(DOC), "exec"), module.__dict__)
    return module


def test_the_example_table_test_passes(example: types.ModuleType) -> None:
    example.test_uploader_table()


def test_the_example_table_pins_every_pair(example: types.ModuleType) -> None:
    spec: ChartSpec = example.UPLOADER
    assert len(example.EXPECTED) == len(spec.configurations()) * len(spec.events()) == 15
    wrong = {**example.EXPECTED, ("waiting", "retry"): example.EXPECTED[("idle", "begin")]}
    with pytest.raises(TableMismatch, match=r"\('waiting', 'retry'\)"):
        assert_table(spec, wrong)


def test_the_example_stateful_test_passes(example: types.ModuleType) -> None:
    run_state_machine_as_test(example.UploaderMachine, settings=example.TestUploader.settings)


def test_the_example_property_passes(example: types.ModuleType) -> None:
    example.test_an_upload_is_only_started_by_begin_or_retry()


def test_the_pages_claim_about_an_undecided_pair_holds(example: types.ModuleType) -> None:
    spec: ChartSpec = example.UPLOADER
    ignored = {**spec.ignored, "uploading": frozenset()}
    with pytest.raises(ChartDefinitionError, match="'retry'"):
        ChartSpec(spec.chart, spec.activities, ignored)
