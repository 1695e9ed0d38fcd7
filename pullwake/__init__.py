"""pullwake: keep async workers reliably awake to new work.

The distribution has three parts, imported from their own top-level folders:

- ``pullwake.machines``: declarative charts, their diagrams and property-testing helpers.
- ``pullwake.runtime``: the anyio actor that runs a chart, and the pull-wake runner apps embed.
- ``pullwake.server``: a Durable Streams wake server with a runner registry.

``pullwake.testing`` (like ``trio.testing``) starts servers, runners, a throwaway PostgreSQL and
a fault proxy for tests, benchmarks and the demo.
"""

from pullwake.errors import PullwakeError

__version__ = "0.1.0"
__all__ = ["PullwakeError", "__version__"]
