"""Fixtures shared by the whole suite.

Every async test runs on asyncio and on trio: the ``anyio_backend`` fixture below is
parametrized, and anyio's pytest plugin runs each ``@pytest.mark.anyio`` test once per backend.
"""

from __future__ import annotations

import os
import signal

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
    # A shell starts a background job (`make test &`, nohup) with SIGINT ignored, and an
    # ignored signal stays ignored across exec: every program a test starts would then ignore
    # the Ctrl-C the test sends it. Python's own handler becomes the default one at exec.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
