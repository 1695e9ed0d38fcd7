"""One validation edge: HTTP and the store refuse the same names with the same error codes."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from pullwake.server import names
from pullwake.server.errors import BadRequest
from pullwake.server.store import Store
from pullwake.server.store.base import SubscriptionConfig
from tests.fixtures.servers import app_client
from tests.server import expect
from tests.server.expect import JSON, STREAMS, SUBS
from tests.server.stores import T0

pytestmark = pytest.mark.anyio

BAD_PATHS = ["a*b", "a\\b", "x" * (names.MAX_PATH_CHARS + 1), "a//b", "a/\x7f"]


@pytest.mark.parametrize("path", BAD_PATHS)
async def test_a_bad_stream_path_is_invalid_path_both_ways(opened_store: Store, path: str) -> None:
    with pytest.raises(BadRequest) as direct:
        await opened_store.create_stream(path, "application/json", T0)
    assert direct.value.code == "INVALID_PATH"
    async with app_client(opened_store) as client:
        response = await client.put(f"{STREAMS}/{quote(path)}", headers=JSON)
        expect.error(response, 400, "INVALID_PATH")


@pytest.mark.parametrize(
    ("length", "code"), [(names.MAX_ID_CHARS, None), (names.MAX_ID_CHARS + 1, "INVALID_ID")]
)
async def test_ids_have_one_length_limit(
    opened_store: Store, length: int, code: str | None
) -> None:
    sub_id = "s" * length
    config = SubscriptionConfig(wake_stream="wake/direct", pattern="events/*")
    if code is None:
        created, _ = await opened_store.put_subscription(sub_id, config, T0)
        assert created
    else:
        with pytest.raises(BadRequest) as direct:
            await opened_store.put_subscription(sub_id, config, T0)
        assert direct.value.code == code
    body = {"type": "pull-wake", "pattern": "events/*", "wake_stream": "wake/http"}
    async with app_client(opened_store) as client:
        response = await client.put(f"{SUBS}/{'h' * length}", json=body)
        if code is None:
            assert response.status_code == 201, response.text
        else:
            expect.error(response, 400, code)


async def test_a_malformed_offset_is_invalid_offset_both_ways(opened_store: Store) -> None:
    await opened_store.register_runner("r1", None, None, T0)
    with pytest.raises(BadRequest) as direct:
        await opened_store.heartbeat("r1", 5_000, "bad offset!", {}, T0)
    assert direct.value.code == "INVALID_OFFSET"
    async with app_client(opened_store) as client:
        await expect.json_stream(client, "events/a")
        response = await client.get(f"{STREAMS}/events/a", params={"offset": "bad offset!"})
        expect.error(response, 400, "INVALID_OFFSET")
