"""One public face: ``pullwake.runtime`` (and ``pullwake`` lazily) export what embedders touch."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import pullwake
import pullwake.runtime

ROOT = Path(__file__).resolve().parents[2]
EMBEDDER_DOCS = ["README.md", "docs/embedding.md", "docs/runner.md"]


def test_every_exported_name_exists_and_is_public() -> None:
    for name in pullwake.runtime.__all__:
        assert not name.startswith("_")
        assert getattr(pullwake.runtime, name) is not None


@pytest.mark.parametrize(
    "name",
    [
        "Runner",
        "RunnerSettings",
        "SubscriptionSpec",
        "Claim",
        "Batch",
        "Wake",
        "Handler",
        "Timeouts",
        "Backoff",
        "ClaimSettings",
        "Clock",
        "SystemClock",
        "ManualClock",
        "OffsetStore",
        "MemoryOffsetStore",
        "FileOffsetStore",
        "TransitionRecord",
        "PullwakeError",
        "RuntimeFailure",
        "Rejected",
        "StopTimeout",
        "RunnerNotRunning",
        "LeaseLost",
    ],
)
def test_what_an_embedder_touches_is_on_the_face(name: str) -> None:
    if name == "PullwakeError":
        assert issubclass(pullwake.runtime.RuntimeFailure, pullwake.PullwakeError)
        return
    assert name in pullwake.runtime.__all__


def test_the_top_level_package_lends_the_runner_names_lazily() -> None:
    from pullwake import Claim, Runner, SubscriptionSpec

    assert Runner is pullwake.runtime.Runner
    assert Claim is pullwake.runtime.Claim
    assert SubscriptionSpec is pullwake.runtime.SubscriptionSpec
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = pullwake.Nope  # type: ignore[attr-defined]
    script = (
        "import sys, pullwake\n"
        "assert 'pullwake.runtime' not in sys.modules and 'httpx' not in sys.modules\n"
        "from pullwake import Runner\n"
        "assert 'pullwake.runtime' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


_PRIVATE_IMPORT = re.compile(r"\bpullwake\.(runtime|machines)\.(?!testing\b)\w+")


@pytest.mark.parametrize("doc", EMBEDDER_DOCS)
def test_docs_import_only_from_the_faces(doc: str) -> None:
    text = (ROOT / doc).read_text(encoding="utf-8")
    imports = [
        line
        for line in text.splitlines()
        if re.match(r"\s*(from|import) pullwake", line) and _PRIVATE_IMPORT.search(line)
    ]
    assert imports == []
