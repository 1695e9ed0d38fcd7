"""``pullwake server``: run the wake server (with no arguments: SQLite, on 127.0.0.1:4437).

Every option can come from the environment instead (``--help`` names each variable), which
keeps secrets off the command line, where ``ps`` shows them: ``PULLWAKE_ADMIN_TOKEN`` and
``PULLWAKE_RUNNER_TOKEN`` (``ID=SECRET`` entries separated by commas or whitespace; the older
``PULLWAKE_RUNNER_TOKENS`` is still read), ``PULLWAKE_DATABASE`` (or ``PULLWAKE_DATABASE_URL``).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

import anyio

from pullwake.errors import PullwakeError
from pullwake.logs import add_log_options, configure_logging
from pullwake.options import add_option, port
from pullwake.server.auth import parse_runner_token
from pullwake.server.config import DEFAULT_DATABASE_URL, DEFAULT_PORT, ServerConfig
from pullwake.server.errors import UnsafeBindError
from pullwake.server.store import open_store


def database_url(text: str) -> str:
    """Check a ``--database`` URL for ``type=`` (the store is only named, not opened)."""
    try:
        open_store(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``pullwake server``'s options."""
    defaults = ServerConfig()
    add_option(
        parser,
        "--database",
        env_aliases=("PULLWAKE_DATABASE_URL",),
        type=database_url,
        default=DEFAULT_DATABASE_URL,
        help=f"sqlite:///PATH or postgresql://... (default: {DEFAULT_DATABASE_URL})",
    )
    add_option(parser, "--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    add_option(
        parser,
        "--port",
        type=port,
        default=DEFAULT_PORT,
        help="port, 0 = any free one (default: %(default)s)",
    )
    add_option(
        parser,
        "--keepalive",
        type=float,
        default=defaults.keepalive,
        help="seconds between keepalives on idle SSE streams (default: %(default)s)",
    )
    add_option(
        parser,
        "--token",
        "--admin-token",
        dest="admin_token",
        help="admin bearer token; any token turns auth on",
    )
    add_option(
        parser,
        "--runner-token",
        action="append",
        default=[],
        env_aliases=("PULLWAKE_RUNNER_TOKENS",),
        metavar="RUNNER_ID=SECRET",
        help="a runner's bearer token; repeat per runner (the variable takes several, "
        "separated by commas or spaces)",
    )
    add_option(
        parser,
        "--max-body-bytes",
        type=int,
        default=defaults.max_body_bytes,
        help="largest request body (default: %(default)s)",
    )
    add_option(
        parser,
        "--shutdown-grace",
        type=float,
        default=defaults.shutdown_grace,
        help="seconds open connections get after SIGTERM (default: %(default)s)",
    )
    add_option(
        parser,
        "--lease-sweep-interval",
        type=float,
        default=defaults.lease_sweep_interval,
        help="seconds between expired-lease sweeps (default: %(default)s)",
    )
    add_option(
        parser,
        "--long-poll-timeout",
        type=float,
        default=defaults.long_poll_timeout,
        help="seconds a long-poll read waits before 204 (default: %(default)s)",
    )
    add_option(
        parser,
        "--idle-timeout",
        type=float,
        default=defaults.idle_timeout,
        help="seconds a connection may stay silent before a request starts (default: %(default)s)",
    )
    add_option(
        parser,
        "--head-timeout",
        type=float,
        default=defaults.head_timeout,
        help="seconds a request line and headers may take to arrive (default: %(default)s)",
    )
    add_option(
        parser,
        "--body-timeout",
        type=float,
        default=defaults.body_timeout,
        help="seconds a request body may take to arrive (default: %(default)s)",
    )
    add_option(
        parser,
        "--max-connections",
        type=int,
        default=defaults.max_connections,
        help="open connections served at once; more get 503 (default: %(default)s, lowered "
        "to fit the open-file limit)",
    )
    add_option(
        parser,
        "--backend",
        choices=["asyncio", "trio"],
        default="asyncio",
        help="async backend (default: %(default)s)",
    )
    add_option(
        parser,
        "--http",
        choices=["auto", "uvicorn", "hypercorn"],
        default=defaults.http,
        help="HTTP server: uvicorn (asyncio only), hypercorn (asyncio or trio), or auto: "
        "uvicorn on asyncio, hypercorn on trio (default: %(default)s)",
    )
    add_log_options(parser)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """Build the configuration from parsed options and the environment."""
    runner_tokens = dict(parse_runner_token(spec) for spec in args.runner_token)
    return ServerConfig(
        host=args.host,
        port=args.port,
        database_url=args.database,
        keepalive=args.keepalive,
        admin_token=args.admin_token or None,
        runner_tokens=runner_tokens,
        max_body_bytes=args.max_body_bytes,
        shutdown_grace=args.shutdown_grace,
        lease_sweep_interval=args.lease_sweep_interval,
        long_poll_timeout=args.long_poll_timeout,
        idle_timeout=args.idle_timeout,
        head_timeout=args.head_timeout,
        body_timeout=args.body_timeout,
        max_connections=args.max_connections,
        http=args.http,
    )


def sqlite_database_problem(url: str) -> str | None:
    """Say why a ``sqlite:///`` database cannot be used here, or return None when it can.

    Only the default database's own folder (``.pullwake``) is created; any other missing folder
    is named, never created (a typo in ``--database`` must not grow a tree of folders). The
    folder must take new files (SQLite writes ``-wal`` and ``-shm`` files beside the database),
    which is tried rather than asked (``os.access`` says yes to root on a read-only mount).
    """
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url[len(prefix) :] in ("", ":memory:"):
        return None
    database = Path(url[len(prefix) :])
    folder = database.parent
    if url == DEFAULT_DATABASE_URL and not folder.exists():
        try:
            folder.mkdir()
        except OSError as exc:
            return f"cannot create the folder {str(folder)!r} for the database: {exc.strerror}"
    missing = folder
    while not missing.exists() and missing != missing.parent:
        missing = missing.parent
    if missing != folder:
        if missing.is_dir():
            absent = folder
            while absent.parent != missing:
                absent = absent.parent
            return (
                f"the folder {str(absent)!r} does not exist (needed for {str(database)!r}); "
                f"create it (mkdir -p {folder}) or choose another --database"
            )
        return f"{str(missing)!r} is not a folder, so {str(database)!r} cannot be created in it"
    if not folder.is_dir():
        return f"{str(folder)!r} is not a folder, so {str(database)!r} cannot be created in it"
    if database.is_dir():
        return f"{str(database)!r} is a folder, not a database file; name a file in it"
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
        with database.open("ab"):
            pass
    except OSError as exc:
        return (
            f"cannot write the database {str(database)!r} or files beside it: {exc.strerror}; "
            "check the folder's permissions or choose another --database"
        )
    return None


def run(args: argparse.Namespace) -> int:
    """Run the server until SIGINT/SIGTERM; return the exit status."""
    configure_logging(args.log_level, args.log_format)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"pullwake server: {exc}", file=sys.stderr)
        return 2
    problem = sqlite_database_problem(config.database_url)
    if problem is not None:
        print(f"pullwake server: {problem}", file=sys.stderr)
        return 2
    from pullwake.server.serve import serve

    if args.backend == "trio" and importlib.util.find_spec("trio") is None:
        print(
            "pullwake server: --backend trio needs trio: pip install 'pullwake[trio]'",
            file=sys.stderr,
        )
        return 2
    if args.backend == "trio" and config.http == "uvicorn":
        print(
            "pullwake server: uvicorn runs on asyncio only: use --http hypercorn (or auto) "
            "with --backend trio",
            file=sys.stderr,
        )
        return 2
    try:
        forced = anyio.run(serve, config, backend=args.backend)
    except UnsafeBindError as exc:
        print(f"pullwake server: {exc}", file=sys.stderr)
        return 2
    except (OSError, PullwakeError) as exc:
        print(f"pullwake server: cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    # A second signal cut the open connections: say so in the status, as an interrupted
    # program does.
    return 130 if forced else 0
