"""Bad input is 400 at the edge, before anything is stored (issue 14, defects 2-6 and 8).

In process, on SQLite and PostgreSQL, asyncio and trio. Each test also reads back what it
touched: a refused request must leave every row readable.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest

from pullwake.server.config import ServerConfig
from pullwake.server.store import Store
from tests.fixtures.servers import app_client
from tests.server import expect
from tests.server.expect import JSON, STREAMS, SUBS

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def client_within(
    store: Store, config: ServerConfig | None = None, *, within: float = 30
) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client whose whole test is bounded (an SSE answer would never end)."""
    with anyio.fail_after(within):
        async with app_client(store, config) as client:
            yield client


#: JSON texts Python's parser reads but strict JSON cannot carry back out.
NON_FINITE = ["[1e999]", "-1e999", '{"a": [1E400]}', "[NaN]", "Infinity", "[-Infinity]"]
#: A lone surrogate escape, high and low, as a value and as a key.
SURROGATES = ['["\\ud800"]', '"x\\udfff"', '{"\\udabc": 1}']


@pytest.mark.parametrize("body", NON_FINITE)
async def test_numbers_that_overflow_and_nan_are_400(opened_store: Store, body: str) -> None:
    async with client_within(opened_store) as client:
        await expect.json_stream(client, "events/a")
        expect.error(
            await client.post(f"{STREAMS}/events/a", headers=JSON, content=body),
            400,
            "INVALID_JSON",
        )
        expect.error(
            await client.put(f"{STREAMS}/events/new", headers=JSON, content=body),
            400,
            "INVALID_JSON",
        )
        # Nothing was stored: the stream is empty and the refused PUT created nothing.
        assert await expect.read_json(client, "events/a") == []
        expect.error(await client.get(f"{STREAMS}/events/new", params={"offset": "-1"}), 404)
        beat = {"lease_ms": 5_000, "diagnostics": {"load": 1.5}}
        assert (await client.post("/v1/runners", json={"id": "r1"})).status_code == 201
        raw = body if body.startswith(("[", "{")) else f"[{body}]"
        bad_beat = f'{{"lease_ms": 5000, "diagnostics": {{"v": {raw}}}}}'
        expect.error(
            await client.post("/v1/runners/r1/heartbeat", headers=JSON, content=bad_beat), 400
        )
        assert (await client.post("/v1/runners/r1/heartbeat", json=beat)).status_code == 200
        assert (await client.get("/v1/runners/r1")).json()["diagnostics"] == {"load": 1.5}


@pytest.mark.parametrize("value", SURROGATES)
async def test_lone_surrogates_are_400_and_rows_stay_readable(
    opened_store: Store, value: str
) -> None:
    async with client_within(opened_store) as client:
        await expect.json_stream(client, "events/a")
        expect.error(await client.post(f"{STREAMS}/events/a", headers=JSON, content=value), 400)
        assert await expect.read_json(client, "events/a") == []

        register = f'{{"id": "r1", "label": {value}}}'
        expect.error(await client.post("/v1/runners", headers=JSON, content=register), 400)
        expect.error(await client.get("/v1/runners/r1"), 404)  # nothing was stored
        assert (await client.post("/v1/runners", json={"id": "r1"})).status_code == 201
        beat = f'{{"lease_ms": 5000, "diagnostics": {{"note": {value}}}}}'
        expect.error(await client.post("/v1/runners/r1/heartbeat", headers=JSON, content=beat), 400)
        assert (await client.get("/v1/runners/r1")).status_code == 200
        assert (await client.get("/v1/runners/r1/health")).status_code == 200

        sub = (
            '{"type": "pull-wake", "pattern": "events/*", "wake_stream": "wake/w", '
            f'"description": {value}}}'
        )
        expect.error(await client.put(f"{SUBS}/s1", headers=JSON, content=sub), 400)
        expect.error(await client.get(f"{SUBS}/s1"), 404)  # nothing was stored


async def test_nul_in_text_fields_is_400_on_both_stores(opened_store: Store) -> None:
    """Both stores refuse what PostgreSQL's TEXT cannot hold (defect 6), and not as a 503."""
    async with client_within(opened_store) as client:
        body = {"id": "r1", "label": "box\x00one"}
        expect.error(await client.post("/v1/runners", json=body), 400, "INVALID_TEXT")
        assert (await client.post("/v1/runners", json={"id": "r1"})).status_code == 201
        beat = {"lease_ms": 5_000, "diagnostics": {"a\x00": "x"}}
        expect.error(await client.post("/v1/runners/r1/heartbeat", json=beat), 400)
        sub = {
            "type": "pull-wake",
            "pattern": "events/*",
            "wake_stream": "wake/w",
            "description": "\x00",
        }
        expect.error(await client.put(f"{SUBS}/s1", json=sub), 400, "INVALID_TEXT")
        assert (await client.get("/v1/runners/r1")).json()["label"] is None


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"d": value}
    return value


@pytest.mark.parametrize("depth", [33, 200, 900, 990])
async def test_deep_diagnostics_are_400_and_the_row_stays_readable(
    opened_store: Store, depth: int
) -> None:
    async with client_within(opened_store) as client:
        assert (await client.post("/v1/runners", json={"id": "r1"})).status_code == 201
        # Written by hand: json.dumps itself may not reach the deepest of these.
        body = '{"lease_ms": 5000, "diagnostics": ' + '{"d":' * depth + "1" + "}" * depth + "}"
        expect.error(await client.post("/v1/runners/r1/heartbeat", headers=JSON, content=body), 400)
        assert (await client.get("/v1/runners/r1")).status_code == 200
        assert (await client.get("/v1/runners/r1/health")).status_code == 200
        # The deepest accepted nesting (the body's own level counts) is stored and rendered.
        beat = {"lease_ms": 5_000, "diagnostics": _nested(30)}
        assert (await client.post("/v1/runners/r1/heartbeat", json=beat)).status_code == 200
        shown = await client.get("/v1/runners/r1")
        assert shown.status_code == 200
        assert shown.json()["diagnostics"] == _nested(30)


@pytest.mark.parametrize("cursor", ["²", "٣", "1²", "１２", "-1", "1" * 19])
@pytest.mark.parametrize("live", ["long-poll", "sse"])
async def test_cursors_are_ascii_digits_or_400(opened_store: Store, cursor: str, live: str) -> None:
    config = ServerConfig(long_poll_timeout=0.05)
    async with client_within(opened_store, config, within=5) as client:
        await expect.json_stream(client, "events/a")
        response = await client.get(
            f"{STREAMS}/events/a", params={"offset": "now", "live": live, "cursor": cursor}
        )
        expect.error(response, 400)
        ok = await client.get(
            f"{STREAMS}/events/a", params={"offset": "now", "live": "long-poll", "cursor": "42"}
        )
        assert ok.status_code == 204
        assert ok.headers["stream-cursor"].isascii()


async def test_a_runner_cannot_tell_missing_subscriptions_from_others(opened_store: Store) -> None:
    config = ServerConfig(admin_token="admin", runner_tokens={"r1": "t1", "r2": "t2"})
    admin = expect.bearer("admin")
    async with client_within(opened_store, config) as client:
        for runner in ("r1", "r2"):
            row = {"id": runner, "wake_stream": f"wake/{runner}"}
            assert (await client.post("/v1/runners", json=row, headers=admin)).status_code == 201
        theirs = {"type": "pull-wake", "pattern": "events/*", "wake_stream": "wake/r2"}
        assert (await client.put(f"{SUBS}/theirs", json=theirs, headers=admin)).status_code == 201

        def shape(response: Any, sub_id: str) -> tuple[int, str, str]:
            error = expect.error(response, 403)
            return response.status_code, error["code"], error["message"].replace(sub_id, "ID")

        mine = expect.bearer("t1")
        for method, suffix, body in [
            ("GET", "", None),
            ("POST", "/claim", {"worker": "r1"}),
        ]:
            answers = []
            for sub_id in ("theirs", "nosuch"):
                response = await client.request(
                    method, f"{SUBS}/{sub_id}{suffix}", json=body, headers=mine
                )
                answers.append(shape(response, sub_id))
            assert answers[0] == answers[1], answers
            assert "wake/r2" not in answers[0][2]
        # The admin still learns what exists.
        expect.error(await client.get(f"{SUBS}/nosuch", headers=admin), 404)
