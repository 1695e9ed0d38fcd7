"""Fixtures shared by the whole suite.

Every async test runs on asyncio and on trio: the ``anyio_backend`` fixture below is
parametrized, and anyio's pytest plugin runs each ``@pytest.mark.anyio`` test once per backend.
"""

from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.servers",
]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
