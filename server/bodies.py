"""Read request bodies within the size limit, and pull typed fields out of JSON objects.

Every helper raises a ``ServerError`` subclass with a message that names the field, so a bad
request is a 400 that says what to fix, never a 500.
"""

from __future__ import annotations

from contextlib import aclosing
from typing import Any

from starlette.requests import ClientDisconnect, Request

from pullwake.server import jsontext
from pullwake.server.digits import is_ascii_digits
from pullwake.server.errors import BadRequest, PayloadTooLarge, RequestTimeout
from pullwake.server.limits import BODY_LATE

_MISSING: Any = object()


#: How much of an oversized body is still read (and thrown away) before answering 413: a
#: server that answers and closes while the client is still sending makes the client's TCP
#: stack drop the answer (a reset), so the client would see a broken connection, not a 413.
DRAIN_LIMIT = 16 * 1024 * 1024


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The body is larger than {limit} bytes, the most this server accepts "
        "(--max-body-bytes). Split the append into smaller ones."
    )


async def read_body(request: Request, limit: int) -> bytes:
    """Return the whole body, or raise ``PayloadTooLarge`` once it passes ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not is_ascii_digits(declared.strip()):
            raise BadRequest("The Content-Length header is not a number.")
        if int(declared) > DRAIN_LIMIT:
            raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async with aclosing(request.stream()) as body_chunks:
            async for chunk in body_chunks:
                size += len(chunk)
                if size > DRAIN_LIMIT:
                    break
                if size <= limit:
                    chunks.append(chunk)
    except ClientDisconnect:
        if request.scope.get(BODY_LATE):
            raise RequestTimeout(
                "The request body did not arrive in time (--body-timeout); send it faster or "
                "in smaller appends. The connection is closed."
            ) from None
        raise BadRequest("The client went away before sending the whole body.") from None
    if size > limit:
        raise _too_large(limit)
    return b"".join(chunks)


def parse_json(data: bytes, *, what: str = "body") -> Any:
    """Parse strict JSON (no NaN/Infinity) or raise ``BadRequest`` (see ``jsontext``)."""
    return jsontext.parse(data, what=what)


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    """Read a JSON object body; an empty body counts as ``{}``.

    The whole object is checked before any field is used: no lone surrogate or NUL in any
    string, no NaN/Infinity or overflowed number, no nesting past
    ``jsontext.MAX_CONTROL_DEPTH`` (so what is stored can always be read back and rendered).
    """
    data = await read_body(request, limit)
    if not data.strip():
        return {}
    value = jsontext.check_control(parse_json(data))
    if not isinstance(value, dict):
        raise BadRequest("The body must be a JSON object.", code="INVALID_REQUEST")
    return value


def _bad(name: str, expected: str) -> BadRequest:
    return BadRequest(f"The field {name!r} must be {expected}.", code="INVALID_REQUEST")


def str_field(
    obj: dict[str, Any], name: str, *, required: bool = False, nullable: bool = True
) -> str | None:
    """Return a string field (``None`` when absent/null and allowed)."""
    value = obj.get(name, _MISSING)
    if value is _MISSING or value is None:
        if required or (value is None and not nullable):
            raise _bad(name, "a non-empty string")
        return None
    if not isinstance(value, str) or (required and not value):
        raise _bad(name, "a non-empty string" if required else "a string")
    return value


def int_field(
    obj: dict[str, Any],
    name: str,
    *,
    default: int | None = None,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    """Return an integer field (booleans are not integers here)."""
    value = obj.get(name, _MISSING)
    if value is _MISSING or value is None:
        if default is None:
            raise _bad(name, "an integer")
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(name, "an integer")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise _bad(name, f"an integer from {minimum} to {maximum}")
    return value


def bool_field(obj: dict[str, Any], name: str, *, default: bool = False) -> bool:
    """Return a boolean field."""
    value = obj.get(name, _MISSING)
    if value is _MISSING or value is None:
        return default
    if not isinstance(value, bool):
        raise _bad(name, "true or false")
    return value


def str_list_field(obj: dict[str, Any], name: str, *, required: bool = False) -> list[str]:
    """Return a list of non-empty strings (``[]`` when absent and not required)."""
    value = obj.get(name, _MISSING)
    if value is _MISSING or value is None:
        if required:
            raise _bad(name, "a non-empty list of strings")
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _bad(name, "a list of non-empty strings")
    if required and not value:
        raise _bad(name, "a non-empty list of strings")
    return value


def object_field(obj: dict[str, Any], name: str) -> dict[str, Any]:
    """Return a JSON object field (``{}`` when absent)."""
    value = obj.get(name, _MISSING)
    if value is _MISSING or value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(name, "a JSON object")
    return value
