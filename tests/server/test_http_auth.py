"""Bearer tokens: admin may do everything; a runner token only its own things (defect 13)."""

from __future__ import annotations

import pytest

from pullwake.server.auth import (
    Authenticator,
    parse_runner_token,
    require_safe_bind,
)
from pullwake.server.config import ServerConfig
from pullwake.server.errors import Unauthorized, UnsafeBindError
from pullwake.server.store import Store
from tests.fixtures.servers import app_client
from tests.server import expect
from tests.server.expect import JSON, STREAMS, SUBS

ADMIN = "admin-secret"
R1 = "r1-secret"
R2 = "r2-secret=with=equals"
CONFIG = ServerConfig(admin_token=ADMIN, runner_tokens={"r1": R1, "r2": R2})


def as_(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def runner_header(token: str) -> dict[str, str]:
    return {"pullwake-authorization": f"Bearer {token}"}


@pytest.mark.anyio
async def test_open_without_tokens(opened_store: Store) -> None:
    async with app_client(opened_store) as client:
        assert (await client.put(f"{STREAMS}/x", headers=JSON)).status_code == 201
        assert (await client.get("/metrics")).status_code == 200


@pytest.mark.anyio
async def test_missing_or_wrong_tokens_are_401(opened_store: Store) -> None:
    async with app_client(opened_store, CONFIG) as client:
        missing = await client.put(f"{STREAMS}/x", headers=JSON)
        expect.error(missing, 401, "UNAUTHORIZED")
        assert missing.headers["www-authenticate"] == "Bearer"
        for header in ("Bearer nope", "Basic YWRtaW4=", "Bearer", ADMIN):
            response = await client.put(f"{STREAMS}/x", headers={**JSON, "authorization": header})
            expect.error(response, 401, "UNAUTHORIZED")
            assert ADMIN not in response.text
        assert (await client.get("/healthz")).status_code == 200
        expect.error(await client.get("/metrics"), 401)
        expect.error(await client.get("/metrics", headers=as_(R1)), 403)
        assert (await client.get("/metrics", headers=as_(ADMIN))).status_code == 200


@pytest.mark.anyio
async def test_runner_scope(opened_store: Store) -> None:
    async with app_client(opened_store, CONFIG) as client:
        admin = as_(ADMIN)
        for path in ("events/a", "secret/s", "wake/r1", "wake/r2"):
            assert (
                await client.put(f"{STREAMS}/{path}", headers={**JSON, **admin})
            ).status_code == 201
        await client.post(f"{STREAMS}/secret/s", headers={**JSON, **admin}, content="1")

        # Register only as itself, with a wake stream in its own namespace.
        expect.error(await client.post("/v1/runners", json={"id": "r2"}, headers=as_(R1)), 403)
        expect.error(
            await client.post(
                "/v1/runners", json={"id": "r1", "wake_stream": "wake/r2"}, headers=as_(R1)
            ),
            403,
        )
        registered = await client.post(
            "/v1/runners", json={"id": "r1", "wake_stream": "wake/r1"}, headers=as_(R1)
        )
        assert registered.status_code == 201
        assert (
            await client.post("/v1/runners/r1/heartbeat", json={"lease_ms": 5000}, headers=as_(R1))
        ).status_code == 200
        expect.error(
            await client.post("/v1/runners/r2/heartbeat", json={"lease_ms": 5000}, headers=as_(R1)),
            403,
        )
        expect.error(await client.get("/v1/runners/r2/health", headers=as_(R1)), 403)

        # Read only its own wake stream.
        assert (await client.get(f"{STREAMS}/wake/r1", headers=as_(R1))).status_code == 200
        assert (await client.head(f"{STREAMS}/wake/r1", headers=as_(R1))).status_code == 200
        for other in ("wake/r2", "events/a", "secret/s"):
            expect.error(await client.get(f"{STREAMS}/{other}", headers=as_(R1)), 403)

        # No writes, no subscription management.
        expect.error(await client.put(f"{STREAMS}/mine", headers={**JSON, **as_(R1)}), 403)
        expect.error(
            await client.post(f"{STREAMS}/wake/r1", headers={**JSON, **as_(R1)}, content="1"), 403
        )
        expect.error(await client.delete(f"{STREAMS}/wake/r1", headers=as_(R1)), 403)
        sub = {"type": "pull-wake", "pattern": "**", "wake_stream": "wake/r1"}
        expect.error(await client.put(f"{SUBS}/grab", json=sub, headers=as_(R1)), 403)

        # Subscriptions: only those that wake this runner.
        mine = {"type": "pull-wake", "pattern": "events/*", "wake_stream": "wake/r1"}
        theirs = {"type": "pull-wake", "pattern": "secret/*", "wake_stream": "wake/r2"}
        assert (await client.put(f"{SUBS}/mine", json=mine, headers=admin)).status_code == 201
        assert (await client.put(f"{SUBS}/theirs", json=theirs, headers=admin)).status_code == 201
        await client.post(f"{STREAMS}/events/a", headers={**JSON, **admin}, content="1")
        await client.post(f"{STREAMS}/secret/s", headers={**JSON, **admin}, content="2")
        assert (await client.get(f"{SUBS}/mine", headers=as_(R1))).status_code == 200
        expect.error(await client.get(f"{SUBS}/theirs", headers=as_(R1)), 403)
        expect.error(
            await client.post(f"{SUBS}/theirs/claim", json={"worker": "r1"}, headers=as_(R1)), 403
        )
        expect.error(
            await client.post(f"{SUBS}/mine/claim", json={"worker": "r2"}, headers=as_(R1)), 403
        )
        claimed = await client.post(f"{SUBS}/mine/claim", json={"worker": "r1"}, headers=as_(R1))
        assert claimed.status_code == 200
        won = claimed.json()

        # While it holds the lease it may read the linked streams, and only those.
        assert (await client.get(f"{STREAMS}/events/a", headers=as_(R1))).status_code == 200
        expect.error(await client.get(f"{STREAMS}/secret/s", headers=as_(R1)), 403)

        # Ack: the claim token in Authorization, the runner's own in Pullwake-Authorization.
        body = {"wake_id": won["wake_id"], "generation": won["generation"]}
        claim_auth = {"authorization": f"Bearer {won['token']}"}
        expect.error(await client.post(f"{SUBS}/mine/ack", json=body, headers=claim_auth), 401)
        expect.error(
            await client.post(
                f"{SUBS}/mine/ack", json=body, headers={**claim_auth, **runner_header(R2)}
            ),
            403,
        )
        acked = await client.post(
            f"{SUBS}/mine/ack", json=body, headers={**claim_auth, **runner_header(R1)}
        )
        assert acked.status_code == 200
        released = await client.post(
            f"{SUBS}/mine/release", json=body, headers={**claim_auth, **runner_header(R1)}
        )
        assert released.status_code == 204
        expect.error(await client.get(f"{STREAMS}/events/a", headers=as_(R1)), 403)


@pytest.mark.anyio
async def test_admin_binds_any_wake_stream(opened_store: Store) -> None:
    async with app_client(opened_store, CONFIG) as client:
        bound = {"id": "r2", "wake_stream": "pools/blue"}
        assert (await client.post("/v1/runners", json=bound, headers=as_(ADMIN))).status_code == 201
        assert (await client.post("/v1/runners", json=bound, headers=as_(R2))).status_code == 200
        moved = {"id": "r2", "wake_stream": "pools/red"}
        expect.error(await client.post("/v1/runners", json=moved, headers=as_(R2)), 403)


def test_tokens_compare_by_value_and_map_to_principals() -> None:
    auth = Authenticator(ADMIN, {"r1": R1})
    assert auth.authenticate({"authorization": f"Bearer {ADMIN}"}).kind == "admin"
    runner = auth.authenticate({"authorization": f"bearer  {R1} "})
    assert (runner.kind, runner.runner_id) == ("runner", "r1")
    wins = auth.authenticate(
        {"authorization": "Bearer claim", "pullwake-authorization": f"Bearer {R1}"}
    )
    assert wins.runner_id == "r1"
    with pytest.raises(Unauthorized):
        auth.authenticate({"authorization": f"Bearer {R1}"}, claim_route=True)
    with pytest.raises(Unauthorized):
        auth.authenticate({"authorization": f"Bearer {R1}x"})
    assert Authenticator(None, {}).authenticate({}).kind == "open"


def test_runner_token_parsing() -> None:
    assert parse_runner_token("r1=abc") == ("r1", "abc")
    assert parse_runner_token("r1=a=b=") == ("r1", "a=b=")
    for bad in ("r1", "=abc", "r1="):
        with pytest.raises(ValueError, match="RUNNER_ID=SECRET"):
            parse_runner_token(bad)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.com"])
def test_non_loopback_needs_tokens(host: str) -> None:
    with pytest.raises(UnsafeBindError, match="refusing to listen"):
        require_safe_bind(ServerConfig(host=host))
    require_safe_bind(ServerConfig(host=host, admin_token="t"))


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_is_fine_without_tokens(host: str) -> None:
    require_safe_bind(ServerConfig(host=host))


def test_config_repr_hides_secrets() -> None:
    assert ADMIN not in repr(CONFIG)
    assert R1 not in repr(CONFIG)
