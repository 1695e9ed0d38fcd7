"""Fixtures shared by the whole suite.

Every async test runs on asyncio and on trio: the ``anyio_backend`` fixture below is
parametrized, and anyio's pytest plugin runs each ``@pytest.mark.anyio`` test once per backend.
"""

from __future__ import annotations

import os

import pytest

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.servers",
]


def pytest_configure(config: pytest.Config) -> None:
    """Drop the caller's ``PULLWAKE_*`` variables: every CLI option reads one, so a developer's
    exported ``PULLWAKE_ADMIN_TOKEN`` would otherwise turn auth on in every server a test starts.
    """
    for name in [name for name in os.environ if name.startswith("PULLWAKE_")]:
        del os.environ[name]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
