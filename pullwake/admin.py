"""``pullwake stream ...`` and ``pullwake subscription ...``: try a server without curl.

::

    pullwake stream create orders/eu                 # a JSON stream
    pullwake stream append orders/eu '{"n": 1}' '{"n": 2}'
    pullwake stream read orders/eu                   # one JSON message per line
    pullwake stream tail orders/eu --count 5         # live, over SSE, until Ctrl-C or 5 messages
    pullwake subscription create orders --pattern 'orders/*' --wake-stream wake/worker-1
    pullwake subscription show orders
    pullwake subscription delete orders

Every command takes ``--url`` (``PULLWAKE_URL``, default ``http://127.0.0.1:4437``) and
``--token``, the admin token (``PULLWAKE_ADMIN_TOKEN``). Messages go to stdout, one per line
(JSON streams as compact JSON, text streams as their text); offsets and notes go to stderr.

These are plain blocking HTTP calls (httpx's synchronous client): a command-line tool runs no
event loop of its own. Exit status: 0 done; 1 the server answered an error (its JSON error body
is shown as one line); 2 bad arguments; 3 no answer from the server; 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import attrs
import httpx
import httpx_sse

from pullwake.options import add_option, server_url

__all__ = ["AdminError", "stream", "subscription"]

DEFAULT_URL = "http://127.0.0.1:4437"
JSON_TYPE = "application/json"
SUBSCRIPTIONS = "/v1/stream/__ds/subscriptions"
#: Seconds of silence that end ``tail``: several server keepalives (3 s by default).
TAIL_SILENCE = 30.0


class AdminError(Exception):
    """A command failed; ``status`` is the exit status, the message its one line."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


@attrs.frozen
class Command:
    """A ``pullwake`` command with actions: what :mod:`pullwake.cli` registers."""

    name: str
    actions: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]]
    handlers: dict[str, Callable[[httpx.Client, argparse.Namespace], None]]

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare the actions and their options."""
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        for action, (help_text, declare) in self.actions.items():
            child = actions.add_parser(action, help=help_text, description=help_text)
            add_option(
                child,
                "--url",
                type=server_url,
                default=DEFAULT_URL,
                help="server URL (default: %(default)s)",
            )
            add_option(
                child,
                "--token",
                dest="admin_token",
                help="the server's admin token (needed when its auth is on)",
            )
            add_option(
                child,
                "--timeout",
                type=float,
                default=10.0,
                help="seconds to wait for each answer (default: %(default)s)",
            )
            declare(child)

    def run(self, args: argparse.Namespace) -> int:
        """Run the chosen action; return the exit status."""
        headers = {"Authorization": f"Bearer {args.admin_token}"} if args.admin_token else {}
        try:
            with httpx.Client(
                base_url=args.url.rstrip("/"), headers=headers, timeout=args.timeout
            ) as client:
                self.handlers[args.action](client, args)
        except AdminError as exc:
            print(f"pullwake {self.name} {args.action}: {exc}", file=sys.stderr)
            return exc.status
        except httpx.TransportError as exc:
            print(
                f"pullwake {self.name} {args.action}: no answer from {args.url} "
                f"({type(exc).__name__}: {str(exc) or 'no detail'}): check that `pullwake server` "
                "runs there",
                file=sys.stderr,
            )
            return 3
        except KeyboardInterrupt:
            return 130
        return 0


# -- answers ----------------------------------------------------------------------------------


def _stream_url(path: str) -> str:
    segments = path.strip("/").split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        # httpx would resolve ``a/../b`` to ``b`` and act on another stream than the one named.
        raise AdminError(
            f"stream path {path!r} has an empty, '.' or '..' segment: name it plainly, e.g. "
            "orders/eu",
            status=2,
        )
    return "/v1/stream/" + quote("/".join(segments), safe="/")


def _check(response: httpx.Response, hint_404: str = "") -> httpx.Response:
    """Return a 2xx answer; raise :class:`AdminError` with one line for anything else."""
    if response.is_success:
        return response
    request = response.request
    said = f"{request.method} {request.url.path} answered {response.status_code}"
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict):
        line = f"{said} {error.get('code', '')}: {error.get('message', '')}"
    elif request.method == "HEAD":  # answers to HEAD carry no body
        line = said + (": no such stream" if response.status_code == 404 else "")
    else:
        text = " ".join(response.text.split())[:120]
        line = f"{said} without a JSON error body ({text!r}): is this a pullwake server?"
    if response.status_code in (401, 403):
        line += " (pass the admin token with --token or PULLWAKE_ADMIN_TOKEN)"
    elif response.status_code == 404 and hint_404:
        line += f" ({hint_404})"
    raise AdminError(line)


def _json_answer(response: httpx.Response) -> Any:
    """Return a 2xx answer's JSON; raise :class:`AdminError` if it is something else."""
    try:
        return response.json()
    except ValueError:
        text = " ".join(response.text.split())[:120]
        raise AdminError(
            f"{response.request.method} {response.request.url.path} answered "
            f"{response.status_code} with no JSON ({text!r}): is this a pullwake server?"
        ) from None


def _json_arguments(values: list[str]) -> list[Any]:
    parsed = []
    for value in values:
        try:
            parsed.append(json.loads(value))
        except ValueError:
            raise AdminError(
                f"{value!r} is not JSON: this is a JSON stream, so quote a string as "
                "JSON ('\"text\"')",
                status=2,
            ) from None
    return parsed


def _messages(content_type: str, body: bytes) -> Iterator[str]:
    """Yield the printable messages of one read's body."""
    if content_type.split(";")[0].strip().lower() == JSON_TYPE:
        for message in json.loads(body) if body else []:
            yield json.dumps(message, separators=(",", ":"))
    elif body:
        yield body.decode("utf-8", "replace")


# -- pullwake stream --------------------------------------------------------------------------


def _declare_path(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="the stream's path, e.g. orders/eu")


def _declare_create(parser: argparse.ArgumentParser) -> None:
    _declare_path(parser)
    add_option(
        parser,
        "--content-type",
        default=JSON_TYPE,
        help="the stream's content type, fixed at creation (default: %(default)s)",
    )


def _create(client: httpx.Client, args: argparse.Namespace) -> None:
    response = _check(
        client.put(_stream_url(args.path), headers={"Content-Type": args.content_type})
    )
    made = "created" if response.status_code == 201 else "already exists"
    print(f"stream {args.path} {made}", file=sys.stderr)


def _declare_append(parser: argparse.ArgumentParser) -> None:
    _declare_path(parser)
    parser.add_argument(
        "data",
        metavar="MESSAGE",
        nargs="+",
        help="a message: JSON for a JSON stream (each argument is one message), else text",
    )
    add_option(
        parser,
        "--content-type",
        help="the stream's content type (default: the one the stream was created with)",
    )


def _append(client: httpx.Client, args: argparse.Namespace) -> None:
    missing = f"from here: pullwake stream create {args.path}"
    if args.content_type is None:
        head = _check(client.head(_stream_url(args.path)), hint_404=missing)
        args.content_type = head.headers.get("content-type", JSON_TYPE)
    if args.content_type.split(";")[0].strip().lower() == JSON_TYPE:
        body = json.dumps(_json_arguments(args.data)).encode()
    else:
        body = "\n".join(args.data).encode()
    response = _check(
        client.post(
            _stream_url(args.path), content=body, headers={"Content-Type": args.content_type}
        ),
        hint_404=missing,
    )
    print(f"appended; next offset {response.headers.get('stream-next-offset')}", file=sys.stderr)


def _declare_read(parser: argparse.ArgumentParser) -> None:
    _declare_path(parser)
    add_option(
        parser,
        "--offset",
        default="-1",
        help="read after this offset: -1 is the start, or an offset printed before "
        "(default: %(default)s)",
    )


def _read(client: httpx.Client, args: argparse.Namespace) -> None:
    offset = args.offset
    while True:
        response = _check(
            client.get(_stream_url(args.path), params={"offset": offset}),
            hint_404=f"from here: pullwake stream create {args.path}",
        )
        for line in _messages(response.headers.get("content-type", ""), response.content):
            print(line)
        offset = response.headers.get("stream-next-offset", offset)
        if response.headers.get("stream-up-to-date") == "true" or not response.content:
            break
    print(f"next offset {offset}", file=sys.stderr)


def _declare_tail(parser: argparse.ArgumentParser) -> None:
    _declare_path(parser)
    add_option(
        parser,
        "--offset",
        default="now",
        help="start after this offset: now (new messages only), -1 (everything), or an offset "
        "printed before (default: %(default)s)",
    )
    add_option(parser, "--count", type=int, help="stop after this many messages (default: never)")


def _tail(client: httpx.Client, args: argparse.Namespace) -> None:
    missing = f"from here: pullwake stream create {args.path}"
    content_type = _check(client.head(_stream_url(args.path)), hint_404=missing).headers.get(
        "content-type", ""
    )
    seen = 0
    timeout = httpx.Timeout(args.timeout, read=max(args.timeout, TAIL_SILENCE))
    params = {"offset": args.offset, "live": "sse"}
    try:
        with httpx_sse.connect_sse(
            client, "GET", _stream_url(args.path), params=params, timeout=timeout
        ) as source:
            _check(source.response, hint_404=missing)
            base64_data = source.response.headers.get("stream-sse-data-encoding") == "base64"
            for event in source.iter_sse():
                if event.event != "data":
                    continue
                data = base64.b64decode(event.data) if base64_data else event.data.encode()
                for line in _messages(content_type, data):
                    print(line, flush=True)
                    seen += 1
                    if args.count is not None and seen >= args.count:
                        return
    except httpx.ReadTimeout:
        raise AdminError(
            f"the server sent nothing, not even a keepalive, for {timeout.read:g} s", status=3
        ) from None
    raise AdminError("the server ended the stream (it stopped, or the stream was deleted)", 3)


stream = Command(
    name="stream",
    actions={
        "create": ("create a stream (no error if it exists with that type)", _declare_create),
        "append": ("append messages to a stream", _declare_append),
        "read": ("print a stream's messages from an offset up to its tail", _declare_read),
        "tail": ("print a stream's new messages as they arrive (SSE)", _declare_tail),
    },
    handlers={"create": _create, "append": _append, "read": _read, "tail": _tail},
)


# -- pullwake subscription --------------------------------------------------------------------


def _declare_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", metavar="ID", help="the subscription's id")


def _declare_subscription_create(parser: argparse.ArgumentParser) -> None:
    _declare_id(parser)
    add_option(
        parser,
        "--wake-stream",
        required=True,
        help="the stream its wakes go to (created as a JSON stream when missing)",
    )
    add_option(parser, "--pattern", help="link every stream matching this glob, e.g. 'orders/*'")
    add_option(
        parser,
        "--stream",
        action="append",
        default=[],
        metavar="PATH",
        help="link this stream (repeatable)",
    )
    add_option(
        parser,
        "--lease-ttl-ms",
        type=int,
        help="how long a claim's lease lasts without an ack (server default: 30000)",
    )
    add_option(parser, "--description", help="free text shown with the subscription")


def _subscription_create(client: httpx.Client, args: argparse.Namespace) -> None:
    if args.pattern is None and not args.stream:
        raise AdminError("give --pattern GLOB or --stream PATH (or both)", status=2)
    wake = client.put(_stream_url(args.wake_stream), headers={"Content-Type": JSON_TYPE})
    _check(wake)
    body: dict[str, Any] = {"type": "pull-wake", "wake_stream": args.wake_stream}
    if args.pattern is not None:
        body["pattern"] = args.pattern
    if args.stream:
        body["streams"] = args.stream
    if args.lease_ttl_ms is not None:
        body["lease_ttl_ms"] = args.lease_ttl_ms
    if args.description is not None:
        body["description"] = args.description
    response = _check(client.put(f"{SUBSCRIPTIONS}/{quote(args.id, safe='')}", json=body))
    print(json.dumps(_json_answer(response), indent=2))


def _subscription_show(client: httpx.Client, args: argparse.Namespace) -> None:
    response = _check(client.get(f"{SUBSCRIPTIONS}/{quote(args.id, safe='')}"))
    print(json.dumps(_json_answer(response), indent=2))


def _subscription_delete(client: httpx.Client, args: argparse.Namespace) -> None:
    _check(client.delete(f"{SUBSCRIPTIONS}/{quote(args.id, safe='')}"))
    print(f"subscription {args.id} deleted", file=sys.stderr)


subscription = Command(
    name="subscription",
    actions={
        "create": ("create a pull-wake subscription", _declare_subscription_create),
        "show": ("print a subscription, its cursors and its holder", _declare_id),
        "delete": ("delete a subscription (no error if it is gone)", _declare_id),
    },
    handlers={
        "create": _subscription_create,
        "show": _subscription_show,
        "delete": _subscription_delete,
    },
)
