"""Compute jittered exponential backoff delays.

One policy serves the wake-stream reconnects, the retries of transient claim failures and the
pause after a handler fails: ``initial * multiplier**attempt``, capped at ``maximum``, then
multiplied by a random factor in ``[1 - jitter, 1]`` so that many runners that lost the same
server do not come back in lockstep. The first step is small, so a clean server restart is
followed by an immediate reconnect; a refusal that persists backs off to the cap and stays there.
"""

from __future__ import annotations

import random

import attrs

__all__ = ["Backoff"]


def _non_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be 0 or more, got {value!r}")


@attrs.frozen
class Backoff:
    """A backoff policy (immutable); :meth:`delay` gives the wait before attempt ``n``."""

    initial: float = attrs.field(default=0.1, validator=_non_negative)
    maximum: float = attrs.field(default=30.0, validator=_non_negative)
    multiplier: float = attrs.field(default=2.0, validator=_non_negative)
    #: Fraction of the delay that is random: 0.5 gives a delay in [d/2, d].
    jitter: float = attrs.field(
        default=0.5, validator=attrs.validators.and_(_non_negative, attrs.validators.le(1.0))
    )

    def ceiling(self, attempt: int) -> float:
        """Return the delay before attempt ``attempt`` (0-based) without jitter."""
        if attempt < 0:
            raise ValueError("attempt must be 0 or more")
        # Cap the exponent so huge attempt counts do not overflow a float.
        return min(self.maximum, self.initial * self.multiplier ** min(attempt, 64))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Return the jittered delay before attempt ``attempt`` (0-based)."""
        ceiling = self.ceiling(attempt)
        factor = 1.0 - self.jitter * (rng or random).random()
        return ceiling * factor
