"""Runner registry rules: register a runner, record its heartbeats, look it up."""

from __future__ import annotations

import json
from typing import Any

from pullwake.server.errors import BadRequest, NotFound
from pullwake.server.names import (
    MAX_DESCRIPTION_CHARS,
    MAX_DIAGNOSTICS_CHARS,
    MAX_RUNNER_LEASE_MS,
    MIN_RUNNER_LEASE_MS,
    check_identifier,
    check_offset,
    check_path,
)
from pullwake.server.store.base import Runner
from pullwake.server.store.rules.transaction import Transaction, check_int

_RUNNER_COLUMNS = (
    "id, label, wake_stream, wake_stream_offset, registered_at_ms, last_heartbeat_at_ms, "
    "lease_ms, diagnostics_json"
)


def _runner(row: tuple[Any, ...]) -> Runner:
    return Runner(
        id=row[0],
        label=row[1],
        wake_stream=row[2],
        wake_stream_offset=row[3],
        registered_at_ms=row[4],
        last_heartbeat_at_ms=row[5],
        lease_ms=row[6],
        diagnostics=json.loads(row[7]),
    )


def _runner_not_found(runner_id: str) -> NotFound:
    return NotFound(
        f"runner {runner_id!r} is not registered: register it again with POST /v1/runners",
        code="RUNNER_NOT_FOUND",
    )


def register_runner(
    tx: Transaction, runner_id: str, label: str | None, wake_stream: str | None, now_ms: int
) -> tuple[bool, Runner]:
    check_identifier(runner_id, "runner id")
    if label is not None and (not isinstance(label, str) or len(label) > MAX_DESCRIPTION_CHARS):
        raise BadRequest(f"label must be text of at most {MAX_DESCRIPTION_CHARS} characters")
    if wake_stream is not None:
        check_path(wake_stream, "wake_stream")
    check_int(now_ms, "now_ms")
    inserted = tx.fetchone(
        "INSERT INTO runners (id, label, wake_stream, registered_at_ms, diagnostics_json) "
        "VALUES (?, ?, ?, ?, '{}') ON CONFLICT (id) DO NOTHING RETURNING id",
        (runner_id, label, wake_stream, now_ms),
    )
    if inserted is None:
        tx.execute(
            "UPDATE runners SET label = ?, wake_stream = ? WHERE id = ?",
            (label, wake_stream, runner_id),
        )
    row = tx.fetchone(f"SELECT {_RUNNER_COLUMNS} FROM runners WHERE id = ?", (runner_id,))
    assert row is not None
    return inserted is not None, _runner(row)


def heartbeat(
    tx: Transaction,
    runner_id: str,
    lease_ms: int,
    wake_stream_offset: str | None,
    diagnostics: dict[str, object],
    now_ms: int,
) -> Runner:
    check_int(lease_ms, "lease_ms", MIN_RUNNER_LEASE_MS, MAX_RUNNER_LEASE_MS)
    check_int(now_ms, "now_ms")
    if wake_stream_offset is not None:
        check_offset(wake_stream_offset, "wake_stream_offset")
    if not isinstance(diagnostics, dict):
        raise BadRequest("diagnostics must be a JSON object")
    try:
        diagnostics_json = json.dumps(diagnostics, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"diagnostics must be plain JSON: {exc}") from exc
    if len(diagnostics_json) > MAX_DIAGNOSTICS_CHARS:
        raise BadRequest(
            f"diagnostics are {len(diagnostics_json)} characters as JSON; keep them under "
            f"{MAX_DIAGNOSTICS_CHARS}"
        )
    row = tx.fetchone(
        "UPDATE runners SET lease_ms = ?, last_heartbeat_at_ms = ?, diagnostics_json = ?, "
        "wake_stream_offset = COALESCE(?, wake_stream_offset) WHERE id = ? "
        f"RETURNING {_RUNNER_COLUMNS}",
        (lease_ms, now_ms, diagnostics_json, wake_stream_offset, runner_id),
    )
    if row is None:
        raise _runner_not_found(runner_id)
    return _runner(row)


def runner(tx: Transaction, runner_id: str) -> Runner:
    row = tx.fetchone(f"SELECT {_RUNNER_COLUMNS} FROM runners WHERE id = ?", (runner_id,))
    if row is None:
        raise _runner_not_found(runner_id)
    return _runner(row)
