"""A wheel built from the checkout, installed without extras in a fresh venv, runs the README's
runner; its ``pullwake server`` says which extra is missing.

The wheel is built from a copy of the checkout (so no ``build/`` folder is left in it) and
installed with pip from the index or pip's cache, as a user would. About 40 s.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest

from tests.fixtures.servers import ServerFactory

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
#: What a wheel build needs from the checkout (the rest, like .venv, stays behind): the
#: project's files and the top-level folders its package-dir mapping names.
_PACKAGE_DIRS = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
    "setuptools"
]["package-dir"].values()
SOURCES = (
    "pyproject.toml",
    "README.md",
    "LICENSE",
    *sorted({d.split("/")[0] for d in _PACKAGE_DIRS}),
)
WAIT = 30.0
JSON = {"Content-Type": "application/json"}


def run(*command: str | Path, timeout: float = 120, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=timeout, cwd=cwd
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the checkout's wheel installed, no extras; return its bin folder."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(REPO / name, source / name, ignore=ignore)
        else:
            shutil.copy2(REPO / name, source / name)
    dist = root / "dist"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, source)
    (wheel,) = dist.glob("pullwake-*.whl")
    venv = root / "venv"
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "python", "-m", "pip", "install", "-q", wheel)
    return venv / "bin"


def readme_program(url: str) -> str:
    """Return the README's runner, pointed at ``url``."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert '"http://127.0.0.1:4437"' in block
    return block.replace('"http://127.0.0.1:4437"', repr(url))


@pytest.mark.timeout(180)
def test_a_wheel_without_extras_runs_the_readme_runner(
    bare_venv: Path, server_factory: ServerFactory, tmp_path: Path
) -> None:
    python = bare_venv / "python"
    # The server's dependencies are not there.
    probe = subprocess.run(
        [python, "-c", "import starlette"], capture_output=True, text=True, timeout=WAIT
    )
    assert probe.returncode != 0
    server = server_factory()  # from the dev venv
    script = tmp_path / "readme_runner.py"
    script.write_text(readme_program(server.url), encoding="utf-8")
    proc = subprocess.Popen(
        [python, script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        with httpx.Client(base_url=server.url, timeout=5) as client:
            deadline = time.monotonic() + WAIT
            # The runner creates its subscription when it connects.
            while client.get("/v1/stream/__ds/subscriptions/orders").status_code != 200:
                assert proc.poll() is None, proc.communicate(timeout=5)
                assert time.monotonic() < deadline, "the README runner never subscribed"
                time.sleep(0.1)
            client.put("/v1/stream/orders/tea", headers=JSON).raise_for_status()
            client.post("/v1/stream/orders/tea", json={"cups": 2}).raise_for_status()
            while (
                client.get("/v1/stream/__ds/subscriptions/orders").json()["streams"][0][
                    "acked_offset"
                ]
                != client.head("/v1/stream/orders/tea").headers["stream-next-offset"]
            ):
                assert proc.poll() is None, proc.communicate(timeout=5)
                assert time.monotonic() < deadline, "the README runner never acked the order"
                time.sleep(0.1)
    finally:
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=WAIT)
    assert "orders/tea {'cups': 2}" in stdout.splitlines(), stderr


def test_a_wheel_without_extras_says_which_extra_the_server_needs(bare_venv: Path) -> None:
    result = subprocess.run(
        [bare_venv / "pullwake", "server", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("pullwake server: needs the 'server' extra (missing: ")
    assert result.stderr.strip().endswith("pip install 'pullwake[server]'")
    assert len(result.stderr.strip().splitlines()) == 1
    # The runner's commands work without it.
    version = subprocess.run(
        [bare_venv / "pullwake", "--version"], capture_output=True, text=True, timeout=WAIT
    )
    assert version.stdout.strip() == "pullwake 0.1.0"
