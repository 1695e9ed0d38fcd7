"""``pullwake run MODULE:HANDLER``: run a pull-wake runner with a handler until a signal.

The handler is ``async def handler(claim)`` imported from ``MODULE`` (the current directory is
on the import path, like ``python -m``). The runner logs every lifecycle transition to stderr.
SIGINT or SIGTERM stops it gracefully: running handlers get ``--grace`` seconds, unfinished
claims are released, and the last heartbeat says "stopped". The first signal logs how many
handlers it waits for and for how long; a second one forces the stop: running handlers are
cancelled at once and their claims released best-effort (a release the server does not answer
within the stop bound leaves that claim to its lease expiry); a third exits at once.

Exit status: 0 after a clean stop; 130 after a forced one; 1 when the server refused the
runner (bad token, bad configuration); 2 for bad arguments or a handler that cannot be
imported; 3 when handlers ignored cancellation at stop (the process then exits without waiting
for them, since their claims are already released).

``--transitions-log FILE`` (or ``PULLWAKE_TRANSITIONS_LOG``) also appends every lifecycle record
to ``FILE`` as a JSON line (``runtime/transitions_log.py``), for tools that watch the runner.
Every option may come from the environment instead (``--help`` names each variable):
``PULLWAKE_URL``, ``PULLWAKE_RUNNER_ID``, and ``PULLWAKE_TOKEN`` rather than ``--token``, which
``ps`` shows.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import anyio
from prometheus_client import CollectorRegistry

from pullwake.logs import add_log_options, configure_logging
from pullwake.options import add_option, port, server_url

from .actor import TransitionRecord
from .backoff import Backoff
from .client import Timeouts
from .errors import RuntimeFailure, StopTimeout
from .metrics import serve_metrics
from .offsets import FileOffsetStore
from .runner import Runner
from .settings import RunnerSettings
from .transitions_log import TransitionsLog

__all__ = ["add_arguments", "load_handler", "run"]

logger = logging.getLogger("pullwake.cli")


class HandlerImportError(Exception):
    """``MODULE:HANDLER`` does not name an importable callable."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``pullwake run``'s options."""
    defaults = RunnerSettings()
    parser.add_argument("handler", metavar="MODULE:HANDLER", help="e.g. myapp.work:handle")
    add_option(
        parser,
        "--url",
        action="append",
        required=True,
        type=server_url,
        help="server URL, e.g. http://127.0.0.1:4437; repeat for several servers sharing one "
        "database",
    )
    add_option(parser, "--runner-id", required=True, help="this runner's name in the registry")
    add_option(parser, "--token", help="bearer token for this runner")
    add_option(
        parser, "--wake-stream", help="wake stream path (default: the one the registry knows)"
    )
    add_option(
        parser,
        "--subscription",
        action="append",
        default=None,
        metavar="ID",
        help="handle only these subscriptions (repeatable; default: every wake)",
    )
    add_option(parser, "--concurrency", type=int, default=8, help="handlers at once (8)")
    add_option(
        parser, "--grace", type=float, default=10.0, help="seconds handlers get at stop (10)"
    )
    add_option(
        parser,
        "--offset-file",
        help="keep the wake-stream offset in this file (default: the server's registry, or "
        "a file under $XDG_STATE_HOME/pullwake when the server has none)",
    )
    add_option(
        parser,
        "--heartbeat-interval",
        type=float,
        default=defaults.heartbeat_interval,
        help="seconds between heartbeats (%(default)s)",
    )
    add_option(
        parser,
        "--read-timeout",
        type=float,
        default=defaults.timeouts.read,
        help="seconds of silence on the wake stream that mean the server is gone; about three "
        "server keepalives (%(default)s)",
    )
    add_option(
        parser,
        "--max-backoff",
        type=float,
        default=defaults.backoff.maximum,
        help="longest wait between reconnects (%(default)s)",
    )
    add_option(
        parser,
        "--transitions-log",
        metavar="FILE",
        default=None,
        help="append every lifecycle record to FILE as a JSON line",
    )
    add_option(parser, "--label", help="a label shown in the registry")
    add_option(
        parser,
        "--backend",
        choices=["asyncio", "trio"],
        default="asyncio",
        help="async backend (default: %(default)s)",
    )
    add_option(
        parser,
        "--metrics-port",
        type=port,
        default=None,
        help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off)",
    )
    add_option(
        parser,
        "--metrics-host",
        default="127.0.0.1",
        help="address the metrics endpoint binds (default: %(default)s)",
    )
    add_log_options(parser)


#: The runner's errors advise its keyword arguments; on the command line they are options.
KEYWORD_FLAGS = {"token=...": "--token", "wake_stream=...": "--wake-stream"}


def as_flags(message: str) -> str:
    """Return ``message`` with the ``Runner(...)`` keywords it advises spelled as options."""
    for keyword, flag in KEYWORD_FLAGS.items():
        message = message.replace(keyword, flag)
    return message


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


def build_runner(
    args: argparse.Namespace,
    handler: Any,
    *,
    inspect: Callable[[TransitionRecord], None] | None = None,
) -> Runner:
    """Make the runner the options describe (``inspect``: its record hook, if any)."""
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
        inspect=inspect,
        metrics_registry=CollectorRegistry() if args.metrics_port is not None else None,
    )


async def serve(runner: Runner) -> int:
    """Run ``runner`` until SIGINT/SIGTERM or until it stops by itself; return the status.

    The first signal starts a graceful stop and says how long it may take; a second one cuts
    the grace (running handlers are cancelled, their claims released best-effort within
    ``stop_bound``, else left to lease expiry) and the status is then 130; a third one exits
    the process at once, leaving every held claim to its lease expiry.
    """
    forced = False
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with runner:
            async with anyio.create_task_group() as tg:

                async def on_signal() -> None:
                    async for signum in signals:
                        handlers = runner.statistics().claims.handlers_active
                        logger.warning(
                            "%s received: stopping: finishing %d handler(s), waiting up to "
                            "%s s (press Ctrl-C again to force)",
                            signal.Signals(signum).name,
                            handlers,
                            f"{runner.grace:g}",
                        )
                        tg.cancel_scope.cancel(reason="signal")
                        return

                tg.start_soon(on_signal)
                await runner.wait_state("stopped")
                tg.cancel_scope.cancel(reason="the runner stopped by itself")
            failure: RuntimeFailure | None = None
            async with anyio.create_task_group() as tg:

                async def on_second_signal() -> None:
                    nonlocal forced
                    async for signum in signals:
                        name = signal.Signals(signum).name
                        if forced:
                            logger.error(
                                "%s received again: exiting now; held claims are left to their "
                                "lease expiry",
                                name,
                            )
                            logging.shutdown()
                            os._exit(130)
                        forced = True
                        logger.warning(
                            "%s received while stopping: forcing the stop: cancelling %d "
                            "handler(s); their claims are released if the server answers "
                            "within %s s, else left to lease expiry",
                            name,
                            runner.statistics().claims.handlers_active,
                            f"{runner.settings.stop_bound:g}",
                        )
                        runner.end_grace()

                tg.start_soon(on_second_signal)
                try:
                    await runner.stop()
                except RuntimeFailure as exc:
                    failure = exc
                tg.cancel_scope.cancel(reason="the runner stopped")
            if isinstance(failure, StopTimeout):
                logger.error("%s", failure)
                logging.shutdown()
                # The stuck handlers' claims are released; waiting for them would make the
                # process's stop unbounded, which is what this exit status exists to avoid.
                os._exit(3)
            if failure is not None:
                raise failure
    return 130 if forced else 0


def run(args: argparse.Namespace) -> int:
    """Run ``pullwake run``; return the exit status."""
    configure_logging(args.log_level, args.log_format)
    with contextlib.ExitStack() as stack:
        try:
            log = args.transitions_log
            hook = stack.enter_context(TransitionsLog(log)) if log else None
            handler = load_handler(args.handler)
            runner = build_runner(args, handler, inspect=hook)
        except (HandlerImportError, ValueError, TypeError, OSError) as exc:
            print(f"pullwake run: {exc}", file=sys.stderr)
            return 2
        return _serve_runner(runner, args.backend, args.metrics_host, args.metrics_port)


async def serve_with_metrics(runner: Runner, host: str, port: int | None) -> int:
    """Run ``serve(runner)``, with its metrics served at ``host:port`` if ``port`` is given."""
    if port is None or runner.metrics is None:
        return await serve(runner)
    async with anyio.create_task_group() as tg:
        try:
            await tg.start(serve_metrics, runner.metrics.registry, port, host)
        except OSError as exc:
            print(
                f"pullwake run: cannot serve metrics on {host}:{port}: {exc.strerror or exc}; "
                "give a free --metrics-port",
                file=sys.stderr,
            )
            return 2
        status = await serve(runner)
        tg.cancel_scope.cancel(reason="the runner stopped")
    return status


def _serve_runner(
    runner: Runner, backend: str, metrics_host: str = "127.0.0.1", metrics_port: int | None = None
) -> int:
    """Run ``serve(runner)`` on ``backend``; map the runner's failures to exit statuses."""
    try:
        return int(
            anyio.run(serve_with_metrics, runner, metrics_host, metrics_port, backend=backend)
        )
    except RuntimeFailure as exc:
        print(f"pullwake run: {as_flags(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
