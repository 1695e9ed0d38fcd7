"""``pullwake health URL RUNNER_ID``: print a runner's health as the server judges it.

Prints the verdict, liveness, lease, the reasons and the runner's own diagnostics; ``--json``
prints the server's answer as is. Exit status: 0 healthy, 1 degraded, 2 unhealthy, 3 when
the server cannot answer (unreachable, no registry, unknown runner, refused token).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import anyio

from pullwake.options import add_option, server_url

from .client import Client, Timeouts
from .errors import RequestFailed, ServerUnreachable

__all__ = ["add_arguments", "format_health", "run"]

EXIT_STATUS = {"healthy": 0, "degraded": 1, "unhealthy": 2}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``pullwake health``'s options."""
    parser.add_argument("url", type=server_url, help="server URL, e.g. http://127.0.0.1:4437")
    parser.add_argument("runner_id", metavar="RUNNER_ID", help="the runner's id in the registry")
    add_option(parser, "--token", help="bearer token (the runner's or the admin's)")
    add_option(parser, "--json", action="store_true", help="print the server's JSON answer")
    add_option(parser, "--timeout", type=float, default=5.0, help="seconds to wait (5)")


async def fetch(url: str, runner_id: str, token: str | None, timeout: float) -> dict[str, Any]:
    """Return the server's health answer for ``runner_id``."""
    timeouts = Timeouts(connect=timeout, read=timeout, request=timeout)
    async with Client(url, token=token, timeouts=timeouts) as client:
        return await client.health(runner_id)


def format_health(health: dict[str, Any]) -> str:
    """Render the health answer for a terminal."""
    diagnostics = health.get("diagnostics") or {}
    lines = [
        f"runner {health.get('runner_id')}: {str(health.get('verdict', '?')).upper()}",
        f"  status:      {health.get('status')} "
        f"(lease remaining {health.get('lease_remaining_ms')} ms)",
        f"  wake stream: {health.get('wake_stream')} at {health.get('wake_stream_offset')}",
    ]
    for reason in health.get("reasons") or []:
        lines.append(f"  reason:      {reason}")
    for claim in health.get("claims") or []:
        lines.append(
            f"  holds:       {claim.get('subscription_id')} (generation "
            f"{claim.get('generation')}, {claim.get('lease_remaining_ms')} ms left)"
        )
    if diagnostics:
        lines.append("  diagnostics:")
        width = max(len(str(key)) for key in diagnostics)
        for key, value in diagnostics.items():
            lines.append(f"    {str(key).ljust(width)}  {value}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run ``pullwake health``; return the exit status."""
    try:
        health = anyio.run(fetch, args.url, args.runner_id, args.token, args.timeout)
    except ServerUnreachable as exc:
        # The client's own message speaks of the runner's retries; this command does not retry.
        cause = exc.__cause__
        detail = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
        hint = " or give it longer with --timeout" if "Timeout" in detail else ""
        print(
            f"pullwake health: no answer from {args.url}{detail}: check that the server runs "
            f"there{hint}",
            file=sys.stderr,
        )
        return 3
    except RequestFailed as exc:
        print(f"pullwake health: {exc}", file=sys.stderr)
        return 3
    except ValueError as exc:
        print(f"pullwake health: {exc}", file=sys.stderr)
        return 3
    print(json.dumps(health, indent=2) if args.json else format_health(health))
    return EXIT_STATUS.get(str(health.get("verdict")), 2)
