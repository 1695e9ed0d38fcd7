"""The server's event log, access log, JSON log lines and metrics (in process and as a process)."""

from __future__ import annotations

import json
import logging

import pytest

from pullwake import __version__
from pullwake.logs import JsonFormatter
from pullwake.server.config import ServerConfig
from pullwake.server.events import auth_mode, redact_dsn
from pullwake.server.store import Store
from tests.fixtures.servers import ServerFactory, app_client
from tests.server import expect
from tests.server.expect import SUBS, bearer


@pytest.mark.anyio
async def test_claims_dones_and_releases_are_logged_and_counted_apart(
    opened_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pullwake.server.events")
    async with app_client(opened_store) as client:
        await expect.json_stream(client, "events/a")
        await expect.subscribe(client, "s1", wake_stream="wake/w1", pattern="events/*")
        tail = await expect.append_json(client, "events/a", {"n": 1})
        won = await expect.claim(client, "s1", "w1")
        fence = {"wake_id": won["wake_id"], "generation": won["generation"]}
        auth = bearer(won["token"])
        assert (await client.post(f"{SUBS}/s1/ack", json=fence, headers=auth)).status_code == 200
        done = {**fence, "acks": [{"stream": "events/a", "offset": tail}], "done": True}
        assert (await client.post(f"{SUBS}/s1/ack", json=done, headers=auth)).status_code == 200
        await expect.append_json(client, "events/a", {"n": 2})
        again = await expect.claim(client, "s1", "w2")
        refence = {"wake_id": again["wake_id"], "generation": again["generation"]}
        released = await client.post(
            f"{SUBS}/s1/release", json=refence, headers=bearer(again["token"])
        )
        assert released.status_code == 204
        metrics = (await client.get("/metrics")).text

    events = [
        json.loads(JsonFormatter().format(r))
        for r in caplog.records
        if r.name == "pullwake.server.events"
    ]
    for entry in events:
        entry.pop("ts")
        entry.pop("logger")
        entry.pop("level")
        entry.pop("message")
    # The lease extension (an ack without done) is not an event.
    assert events == [
        {"subscription": "s1", "worker": "w1", **fence},
        {"subscription": "s1", **fence},
        {"subscription": "s1", "worker": "w2", **refence},
        {"subscription": "s1", **refence},
    ]
    messages = [r.getMessage() for r in caplog.records if r.name == "pullwake.server.events"]
    assert messages[0].startswith("claim s1 by w1 (wake ")
    assert messages[1].startswith("done s1 ")
    assert messages[3].startswith("release s1 ")

    assert 'pullwake_acks_total{kind="extend",outcome="ok"} 1.0' in metrics
    assert 'pullwake_acks_total{kind="done",outcome="ok"} 1.0' in metrics
    assert 'pullwake_releases_total{outcome="ok"} 1.0' in metrics
    assert 'kind="release"' not in metrics
    assert "_created" not in metrics
    assert 'pullwake_server_info{python="' in metrics
    assert f'version="{__version__}"' in metrics


@pytest.mark.anyio
async def test_the_access_log_is_at_debug(
    opened_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pullwake.server.access")
    async with app_client(opened_store) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert not [r for r in caplog.records if r.name == "pullwake.server.access"]
        caplog.set_level(logging.DEBUG, logger="pullwake.server.access")
        assert (await client.get("/v1/stream/nothing")).status_code == 404
    [line] = [r for r in caplog.records if r.name == "pullwake.server.access"]
    assert line.levelno == logging.DEBUG
    assert line.getMessage().startswith("GET /v1/stream/nothing 404 ")
    assert json.loads(JsonFormatter().format(line))["status"] == 404


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://app:s3cr%t@db:5432/pw", "postgresql://app:***@db:5432/pw"),
        (
            "postgres://app@db/pw?password=hunter2&sslmode=require",
            "postgres://app@db/pw?password=***&sslmode=require",
        ),
        ("sqlite:///.pullwake/pullwake.db", "sqlite:///.pullwake/pullwake.db"),
    ],
)
def test_a_dsn_is_shown_without_its_password(url: str, shown: str) -> None:
    assert redact_dsn(url) == shown


def test_the_auth_mode_names_no_secret() -> None:
    assert auth_mode(ServerConfig()).startswith("off")
    mode = auth_mode(ServerConfig(admin_token="adm1n", runner_tokens={"r1": "t0k", "r2": "t1k"}))
    assert mode == "bearer tokens (admin token, 2 runner tokens)"


@pytest.mark.e2e
def test_pullwake_server_logs_a_json_banner(server_factory: ServerFactory) -> None:
    server = server_factory(args=["--log-format", "json", "--admin-token", "adm1n"])
    lines = [json.loads(line) for line in server.stderr_text().splitlines() if line.startswith("{")]
    [banner] = [e for e in lines if e["logger"] == "pullwake.server.events"]
    assert banner["level"] == "INFO"
    assert banner["url"] == server.url
    assert banner["store"] == "sqlite"
    assert banner["auth"] == "bearer tokens (admin token)"
    # (The fixture's log file starts with the command line; the log lines hold no secret.)
    assert not [e for e in lines if "adm1n" in json.dumps(e)]
    assert {"ts", "level", "logger", "message"} <= set(lines[0])
