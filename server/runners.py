"""HTTP handlers for pullwake's runner registry under ``/v1/runners`` (not part of the spec).

``POST /v1/runners`` registers ``{id, label?, wake_stream?}`` (201 new, 200 known) and answers
the row, including ``wake_stream_offset``: the resume point the runner last reported, so a
restarted runner does not replay its wake stream from ``-1``. ``POST .../heartbeat`` renews the
runner's lease and records its offset and diagnostics (404 when unknown: the runner registers
again). ``GET .../health`` judges it (see ``health.py``).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pullwake.server import names
from pullwake.server.bodies import int_field, object_field, read_json_object, str_field
from pullwake.server.context import context_of
from pullwake.server.errors import NotFound
from pullwake.server.health import health_json, runner_json

#: Bounds on a heartbeat's lease: one second to one day.


async def register(request: Request) -> Response:
    """Register a runner, or confirm it (answers the row with its saved offset)."""
    ctx = context_of(request)
    principal = ctx.auth.authenticate(request.headers)
    body = await read_json_object(request, ctx.config.max_body_bytes)
    runner_id = names.check_identifier(str_field(body, "id", required=True) or "", "runner id")
    label = str_field(body, "label")
    wake_stream = str_field(body, "wake_stream")
    if wake_stream is not None:
        names.check_path(wake_stream, "wake_stream")
    ctx.policy.require_self(principal, runner_id)
    if not principal.unrestricted:
        try:
            existing = await ctx.store.runner(runner_id)
        except NotFound:
            existing = None
        ctx.policy.require_wake_stream_binding(principal, runner_id, wake_stream, existing)
    created, runner = await ctx.store.register_runner(runner_id, label, wake_stream, ctx.clock())
    return JSONResponse(runner_json(runner), status_code=201 if created else 200)


async def heartbeat(request: Request) -> Response:
    """Renew a runner's lease; record its wake-stream offset and diagnostics."""
    ctx = context_of(request)
    principal = ctx.auth.authenticate(request.headers)
    runner_id = names.check_identifier(request.path_params["runner_id"], "runner id")
    ctx.policy.require_self(principal, runner_id)
    body = await read_json_object(request, ctx.config.max_body_bytes)
    lease_ms = int_field(
        body, "lease_ms", minimum=names.MIN_RUNNER_LEASE_MS, maximum=names.MAX_RUNNER_LEASE_MS
    )
    offset = str_field(body, "wake_stream_offset")
    if offset is not None:
        names.check_offset(offset)
    diagnostics = object_field(body, "diagnostics")
    runner = await ctx.store.heartbeat(runner_id, lease_ms, offset, diagnostics, ctx.clock())
    return JSONResponse(runner_json(runner))


async def show(request: Request) -> Response:
    """Return one runner's registry row."""
    ctx = context_of(request)
    principal = ctx.auth.authenticate(request.headers)
    runner_id = names.check_identifier(request.path_params["runner_id"], "runner id")
    ctx.policy.require_self(principal, runner_id)
    return JSONResponse(runner_json(await ctx.store.runner(runner_id)))


async def health(request: Request) -> Response:
    """Return the runner's liveness, diagnostics, held claims and a verdict."""
    ctx = context_of(request)
    principal = ctx.auth.authenticate(request.headers)
    runner_id = names.check_identifier(request.path_params["runner_id"], "runner id")
    ctx.policy.require_self(principal, runner_id)
    runner = await ctx.store.runner(runner_id)
    held = await ctx.store.claims_held_by(runner_id)
    return JSONResponse(health_json(runner, held, ctx.clock()))
