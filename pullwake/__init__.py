"""pullwake: keep async workers reliably awake to new work.

The distribution has three parts, imported from their own top-level folders:

- ``pullwake.machines``: declarative charts, their diagrams and property-testing helpers.
- ``pullwake.runtime``: the anyio actor that runs a chart, and the pull-wake runner apps embed.
- ``pullwake.server``: a Durable Streams wake server with a runner registry.

``pullwake.testing`` (like ``trio.testing``) starts servers, runners, a throwaway PostgreSQL and
a fault proxy for tests, benchmarks and the demo.

The names an embedding application needs most are importable from here too
(``from pullwake import Runner, Claim, SubscriptionSpec``); they are loaded from
``pullwake.runtime`` on first use, so ``import pullwake`` alone stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pullwake.errors import PullwakeError

if TYPE_CHECKING:
    from pullwake.runtime import (
        Batch,
        Claim,
        Handler,
        Rejected,
        Runner,
        RunnerSettings,
        RuntimeFailure,
        StopTimeout,
        SubscriptionSpec,
        Wake,
    )

__version__ = "0.1.0"

#: Names re-exported from ``pullwake.runtime``, imported when first asked for.
_FROM_RUNTIME = frozenset(
    {
        "Batch",
        "Claim",
        "Handler",
        "Rejected",
        "Runner",
        "RunnerSettings",
        "RuntimeFailure",
        "StopTimeout",
        "SubscriptionSpec",
        "Wake",
    }
)

__all__ = [
    "Batch",
    "Claim",
    "Handler",
    "PullwakeError",
    "Rejected",
    "Runner",
    "RunnerSettings",
    "RuntimeFailure",
    "StopTimeout",
    "SubscriptionSpec",
    "Wake",
    "__version__",
]


def __getattr__(name: str) -> Any:
    """Import a name of :data:`_FROM_RUNTIME` from ``pullwake.runtime`` when first used."""
    if name in _FROM_RUNTIME:
        value = getattr(importlib.import_module("pullwake.runtime"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pullwake' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_FROM_RUNTIME})
