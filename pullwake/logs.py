"""Log set-up of the ``pullwake`` commands: plain text or one JSON object per line.

``--log-format json`` (or ``PULLWAKE_LOG_FORMAT=json``) makes every record one line of JSON
with ``ts`` (UTC, ISO 8601), ``level``, ``logger`` and ``message``, and the fields of
:data:`FIELDS` when the log call passed them as ``extra=`` (``wake_id``, ``subscription``,
``generation``, ``runner_id``, ...); an exception adds ``exc``, its formatted traceback. A log
shipper can then filter on a subscription without parsing prose.

httpx and httpcore log every request at INFO; the commands set them to WARNING unless
``--log-level DEBUG`` asks for everything (the runner's own lines say what matters).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

from pullwake.options import add_option

__all__ = ["FIELDS", "JsonFormatter", "add_log_options", "configure_logging"]

#: Fields copied from a record's ``extra=`` into its JSON line, when present.
FIELDS = (
    "wake_id",
    "subscription",
    "generation",
    "runner_id",
    "worker",
    "stream",
    "status",
    "url",
    "store",
    "auth",
    "http",
)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Loggers that talk per request: quiet below DEBUG.
CHATTY = ("httpx", "httpcore")


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object on one line (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, default=str, ensure_ascii=False)


def _iso(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def add_log_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--log-level`` and ``--log-format`` (each also from its ``PULLWAKE_*`` variable)."""
    add_option(
        parser,
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="stderr log level (default: %(default)s)",
    )
    add_option(
        parser,
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="stderr log lines: text, or one JSON object per line (default: %(default)s)",
    )


def configure_logging(level: str, log_format: str = "text") -> None:
    """Send the process's logs to stderr at ``level``, as text or JSON lines.

    Replaces the root logger's handlers (a second call does not stack a second handler).
    """
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level))
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
