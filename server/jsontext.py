"""Strict JSON and text at the edge: what a request may carry before anything is stored.

Python's ``json`` module is lenient in three ways a wire protocol cannot be:

* it reads ``NaN``, ``Infinity`` and numbers that overflow a double (``1e999`` becomes
  ``inf``), and writes them back as ``NaN``/``Infinity``, which no strict parser accepts;
* it reads lone surrogate escapes (``"\\ud800"``) into ``str`` values that cannot be encoded
  as UTF-8, so storing or answering them fails later, far from the request;
* it nests as deep as the interpreter's recursion limit, so a value parsed just under it
  overflows when it is rendered again.

Here every JSON body is parsed with constants refused, every value written to a stream is
re-encoded with ``allow_nan=False`` (an overflow is refused there), and control bodies (runner
rows, subscriptions, heartbeats) are walked once, without recursion, to refuse lone
surrogates, NUL characters (PostgreSQL's ``TEXT`` cannot hold them, so both stores refuse them
alike), non-finite numbers and nesting deeper than :data:`MAX_CONTROL_DEPTH`. Every refusal is
a ``BadRequest`` (400) that names what to fix.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from pullwake.server.errors import BadRequest

#: The deepest nesting a control body (and so heartbeat diagnostics) may have. Far below the
#: interpreter's recursion limit, so storing and rendering it again always has room.
MAX_CONTROL_DEPTH = 32

#: Characters no text field may hold: lone surrogates (not encodable as UTF-8) and NUL.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _invalid(what: str, why: str) -> BadRequest:
    return BadRequest(
        f"The {what} is not valid JSON ({why}); send UTF-8 JSON.", code="INVALID_JSON"
    )


def parse(data: bytes, *, what: str = "body") -> Any:
    """Parse strict JSON (no ``NaN``/``Infinity``) or raise ``BadRequest``.

    Numbers that overflow are caught when the value is encoded again (:func:`encode`) or
    walked (:func:`check_control`); the parser itself turns them into ``inf``.
    """
    try:
        text = data.decode("utf-8")
        return json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _invalid(what, type(exc).__name__) from None


def encode(value: Any, *, what: str = "body") -> bytes:
    """Encode one parsed value as compact UTF-8 JSON, refusing what is not strict JSON.

    ``allow_nan=False`` refuses overflowed numbers (``1e999``), the UTF-8 codec refuses lone
    surrogates, and a value nested too deep to render fails here, not on a later read.
    """
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return text.encode("utf-8")
    except ValueError:
        raise _invalid(what, "a number out of range, NaN or Infinity") from None
    except UnicodeEncodeError:
        raise _invalid(what, "a lone surrogate escape such as \\ud800") from None
    except RecursionError:
        raise _invalid(what, "nested too deep") from None


def check_text(text: str, *, what: str) -> str:
    """Return ``text`` unless it holds a lone surrogate or a NUL (then ``BadRequest``)."""
    if not text.isascii() or "\x00" in text:
        found = _UNSTORABLE.search(text)
        if found is not None:
            raise BadRequest(
                f"The {what} contains U+{ord(found.group()):04X}, which cannot be stored "
                "(a NUL or a lone surrogate); send well-formed Unicode text without NUL.",
                code="INVALID_TEXT",
            )
    return text


def check_control(value: Any, *, what: str = "body", max_depth: int = MAX_CONTROL_DEPTH) -> Any:
    """Return ``value`` (a parsed control body) once every part of it can be stored and shown.

    Walks the value without recursion: strings and keys must pass :func:`check_text`, floats
    must be finite, and nothing may nest deeper than ``max_depth``.
    """
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            check_text(item, what=f"text in the {what}")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise _invalid(what, "a number out of range, NaN or Infinity")
        elif isinstance(item, (dict, list)):
            if depth > max_depth:
                raise BadRequest(
                    f"The {what} nests deeper than {max_depth} levels; flatten it.",
                    code="INVALID_JSON",
                )
            if isinstance(item, dict):
                for key, inner in item.items():
                    check_text(key, what=f"a key in the {what}")
                    pending.append((inner, depth + 1))
            else:
                pending.extend((inner, depth + 1) for inner in item)
    return value
