"""The anyio effect layer: the chart actor and the pull-wake runner.

Applications need :class:`Runner` (with :class:`SubscriptionSpec` and :class:`RunnerSettings`)
and the :class:`Claim` their handler receives; see ``docs/embedding.md``.
"""

from .claims import Batch, Claim
from .runner import Runner, RunnerSettings, SubscriptionSpec

__all__ = ["Batch", "Claim", "Runner", "RunnerSettings", "SubscriptionSpec"]
