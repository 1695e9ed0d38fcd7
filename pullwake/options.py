"""Command-line options shared by the ``pullwake`` commands: environment defaults and checks.

Every option of ``pullwake server``, ``run``, ``health`` and the admin commands is declared
through :func:`add_option`, which also reads it from an environment variable whose name is
derived from the option the same way everywhere: ``PULLWAKE_`` and the option's destination in
upper case (``--url`` -> ``PULLWAKE_URL``, ``--runner-id`` -> ``PULLWAKE_RUNNER_ID``,
``--admin-token`` -> ``PULLWAKE_ADMIN_TOKEN``). The command line wins over the environment;
``--help`` names the variable of each option.

The ``type=`` checkers here (:func:`port`, :func:`server_url`) turn ordinary mistakes into one
argparse line (``pullwake server: error: argument --port: ...``, exit status 2) instead of a
traceback from deep inside a socket call.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import Any

import httpx

__all__ = ["add_option", "env_name", "port", "server_url"]

PREFIX = "PULLWAKE_"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def env_name(dest: str) -> str:
    """Return the environment variable of the option whose destination is ``dest``."""
    return PREFIX + dest.upper().replace("-", "_")


class _AppendReplacingDefault(argparse.Action):
    """``action="append"`` whose first use replaces the default instead of extending it.

    argparse's own ``append`` adds to a non-empty default, so ``PULLWAKE_URL=a pullwake run
    --url b`` would use both servers; here the command line replaces the environment.
    """

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        items = getattr(namespace, self.dest, None)
        if items is self.default or items is None:
            items = []
        setattr(namespace, self.dest, [*items, values])


def _destination(flags: Sequence[str], kwargs: dict[str, Any]) -> str:
    if "dest" in kwargs:
        return str(kwargs["dest"])
    long_flags = [flag for flag in flags if flag.startswith("--")]
    return (long_flags[0] if long_flags else flags[0]).lstrip("-").replace("-", "_")


def _parse_flag(parser: argparse.ArgumentParser, variable: str, text: str) -> bool:
    if text.strip().lower() in _TRUE:
        return True
    if text.strip().lower() in _FALSE:
        return False
    parser.error(f"{variable}={text!r} is not a yes/no value: use 1 or 0")
    raise AssertionError("unreachable")


def _convert(
    parser: argparse.ArgumentParser,
    variable: str,
    text: str,
    convert: Callable[[str], Any] | None,
    choices: Sequence[Any] | None,
) -> Any:
    try:
        value = convert(text) if convert is not None else text
    except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
        detail = str(exc) or f"not a valid {getattr(convert, '__name__', 'value')}"
        parser.error(f"{variable}={text!r}: {detail}")
    if choices is not None and value not in choices:
        parser.error(
            f"{variable}={text!r} is not one of {', '.join(str(choice) for choice in choices)}"
        )
    return value


def add_option(
    parser: argparse.ArgumentParser,
    *flags: str,
    env_aliases: Sequence[str] = (),
    **kwargs: Any,
) -> argparse.Action:
    """Add an option that defaults to its ``PULLWAKE_*`` environment variable.

    Takes ``parser.add_argument``'s arguments. A repeatable option (``action="append"``)
    reads several values from one variable, separated by commas or whitespace; a switch
    (``action="store_true"``) reads 1/0, true/false, yes/no. A required option is optional
    while its variable is set. ``env_aliases`` are older names still read (after the derived
    one), so renaming a variable does not break a deployment.
    """
    if not kwargs.get("help"):
        raise ValueError(f"option {flags[0]} needs help text")
    variable = env_name(_destination(flags, kwargs))
    text: str | None = None
    for name in (variable, *env_aliases):
        if os.environ.get(name) is not None:
            variable, text = name, os.environ[name]
            break
    action = kwargs.get("action")
    convert = kwargs.get("type")
    choices = kwargs.get("choices")
    if action == "append":
        kwargs["action"] = _AppendReplacingDefault
        if text is not None and text.replace(",", " ").split():
            kwargs["default"] = [
                _convert(parser, variable, part, convert, choices)
                for part in text.replace(",", " ").split()
            ]
            kwargs["required"] = False
    elif action == "store_true":
        if text is not None:
            kwargs["default"] = _parse_flag(parser, variable, text)
    elif action is None and text is not None and text != "":
        kwargs["default"] = _convert(parser, variable, text, convert, choices)
        kwargs["required"] = False
    kwargs["help"] = f"{kwargs['help']} [env: {env_name(_destination(flags, kwargs))}]"
    return parser.add_argument(*flags, **kwargs)


def port(text: str) -> int:
    """Parse a TCP port (0 means any free one) for ``type=``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(
            f"port {value} is out of range: give 0-65535 (0 picks a free port)"
        )
    return value


def server_url(text: str) -> str:
    """Check a server URL (``http://host:port``) for ``type=``; return it unchanged."""
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a URL ({exc}): write e.g. http://127.0.0.1:4437"
        ) from None
    if url.scheme not in ("http", "https") or not url.host:
        example = f"http://{text}" if "://" not in text else "http://127.0.0.1:4437"
        raise argparse.ArgumentTypeError(f"{text!r} is not an http(s) URL: write e.g. {example}")
    if url.port is not None and not 1 <= url.port <= 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r} has port {url.port}, out of range: give 1-65535 (4437 is the default)"
        )
    return text
