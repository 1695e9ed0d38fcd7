"""``pullwake run MODULE:HANDLER``: run a pull-wake runner with a handler until a signal.

The handler is ``async def handler(claim)`` imported from ``MODULE`` (the current directory is
on the import path, like ``python -m``). The runner logs every lifecycle transition to stderr.
SIGINT or SIGTERM stops it gracefully: running handlers get ``--grace`` seconds, unfinished
claims are released, and the last heartbeat says "stopped".

Exit status: 0 after a clean stop; 1 when the server refused the runner (bad token, bad
configuration); 2 for bad arguments or a handler that cannot be imported; 3 when handlers
ignored cancellation at stop (the process then exits without waiting for them, since their
claims are already released).

The token may come from ``PULLWAKE_TOKEN`` instead of ``--token`` (which ``ps`` shows).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from typing import Any

import anyio

from .backoff import Backoff
from .client import Timeouts
from .errors import RuntimeFailure, StopTimeout
from .offsets import FileOffsetStore
from .runner import Runner
from .settings import RunnerSettings

__all__ = ["add_arguments", "load_handler", "run"]

logger = logging.getLogger("pullwake.cli")


class HandlerImportError(Exception):
    """``MODULE:HANDLER`` does not name an importable callable."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``pullwake run``'s options."""
    defaults = RunnerSettings()
    parser.add_argument("handler", metavar="MODULE:HANDLER", help="e.g. myapp.work:handle")
    parser.add_argument(
        "--url",
        action="append",
        required=True,
        help="server URL; repeat for several servers sharing one database",
    )
    parser.add_argument("--runner-id", required=True, help="this runner's name in the registry")
    parser.add_argument(
        "--token",
        default=os.environ.get("PULLWAKE_TOKEN"),
        help="bearer token for this runner (or PULLWAKE_TOKEN)",
    )
    parser.add_argument(
        "--wake-stream", help="wake stream path (default: the one the registry knows)"
    )
    parser.add_argument(
        "--subscription",
        action="append",
        default=None,
        metavar="ID",
        help="handle only these subscriptions (repeatable; default: every wake)",
    )
    parser.add_argument("--concurrency", type=int, default=8, help="handlers at once (8)")
    parser.add_argument(
        "--grace", type=float, default=10.0, help="seconds handlers get at stop (10)"
    )
    parser.add_argument(
        "--offset-file",
        help="keep the wake-stream offset in this file (default: the server's registry, or "
        "a file under $XDG_STATE_HOME/pullwake when the server has none)",
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=float,
        default=defaults.heartbeat_interval,
        help="seconds between heartbeats (%(default)s)",
    )
    parser.add_argument(
        "--read-timeout",
        type=float,
        default=defaults.timeouts.read,
        help="seconds of silence on the wake stream that mean the server is gone; about three "
        "server keepalives (%(default)s)",
    )
    parser.add_argument(
        "--max-backoff",
        type=float,
        default=defaults.backoff.maximum,
        help="longest wait between reconnects (%(default)s)",
    )
    parser.add_argument("--label", help="a label shown in the registry")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )


def load_handler(spec: str) -> Any:
    """Import ``MODULE:ATTR`` (``ATTR`` may be dotted) and return it if it is callable."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise HandlerImportError(f"{spec!r} is not MODULE:HANDLER; write e.g. myapp.work:handle")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise HandlerImportError(f"cannot import module {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise HandlerImportError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(target):
        raise HandlerImportError(f"{spec!r} is not callable; give an async function")
    return target


def build_runner(args: argparse.Namespace, handler: Any) -> Runner:
    """Make the runner the options describe."""
    defaults = RunnerSettings()
    settings = RunnerSettings(
        heartbeat_interval=args.heartbeat_interval,
        timeouts=Timeouts(
            connect=defaults.timeouts.connect,
            read=args.read_timeout,
            request=defaults.timeouts.request,
        ),
        backoff=Backoff(initial=defaults.backoff.initial, maximum=args.max_backoff),
    )
    return Runner(
        args.url,
        runner_id=args.runner_id,
        handler=handler,
        token=args.token,
        wake_stream=args.wake_stream,
        subscriptions=args.subscription,
        concurrency=args.concurrency,
        grace=args.grace,
        offset_store=FileOffsetStore(args.offset_file) if args.offset_file else None,
        settings=settings,
        label=args.label,
    )


async def serve(runner: Runner) -> int:
    """Run ``runner`` until SIGINT/SIGTERM or until it stops by itself; return the status."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with runner:
            async with anyio.create_task_group() as tg:

                async def on_signal() -> None:
                    async for signum in signals:
                        logger.info("%s received: stopping", signal.Signals(signum).name)
                        tg.cancel_scope.cancel(reason="signal")
                        return

                tg.start_soon(on_signal)
                await runner.wait_state("stopped")
                tg.cancel_scope.cancel(reason="the runner stopped by itself")
            try:
                await runner.stop()
            except StopTimeout as exc:
                logger.error("%s", exc)
                logging.shutdown()
                # The stuck handlers' claims are released; waiting for them would make the
                # process's stop unbounded, which is what this exit status exists to avoid.
                os._exit(3)
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``pullwake run``; return the exit status."""
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        handler = load_handler(args.handler)
        runner = build_runner(args, handler)
    except (HandlerImportError, ValueError, TypeError) as exc:
        print(f"pullwake run: {exc}", file=sys.stderr)
        return 2
    try:
        return int(anyio.run(serve, runner, backend=args.backend))
    except RuntimeFailure as exc:
        print(f"pullwake run: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
