"""The server as a process: default start, refusal to bind unsafely, SIGKILL and restart, and
two processes sharing one PostgreSQL (defect 12: nothing lives only in memory)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from contextlib import aclosing
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from httpx_sse import aconnect_sse

from pullwake.server.config import ServerConfig
from pullwake.server.serve import serve
from pullwake.testing import LISTENING_PREFIX, ServerProcess
from tests.fixtures.servers import ServerFactory

JSON = {"content-type": "application/json"}
SUBS = "/v1/stream/__ds/subscriptions"


def run_cli(*args: str, cwd: Path, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pullwake", "server", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )


def test_no_arguments_serves_sqlite_on_loopback(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", 4437))
        except OSError:
            pytest.skip("something else (a demo?) holds 127.0.0.1:4437, the default port")
    # No option at all: the server's defaults (port 4437, SQLite under the working directory).
    server = ServerProcess(None, log_dir=tmp_path, port=None, backend=None)
    with server:
        assert server.url == "http://127.0.0.1:4437"
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.put("/v1/stream/hello", headers=JSON).status_code == 201
            assert client.get("/healthz").json() == {"status": "ok"}
        assert (tmp_path / ".pullwake" / "pullwake.db").exists()
        status = server.terminate()
    assert status == 0


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_refuses_to_bind_beyond_loopback_without_tokens(tmp_path: Path, host: str) -> None:
    result = run_cli("--host", host, "--port", "0", cwd=tmp_path)
    assert result.returncode == 2
    assert "refusing to listen" in result.stderr
    assert "--admin-token" in result.stderr
    assert LISTENING_PREFIX not in result.stdout


def test_rejects_malformed_runner_tokens(tmp_path: Path) -> None:
    result = run_cli("--runner-token", "no-equals-sign", "--port", "0", cwd=tmp_path)
    assert result.returncode == 2
    assert "RUNNER_ID=SECRET" in result.stderr


def test_secrets_never_reach_the_log(server_factory: ServerFactory) -> None:
    secret = "s3cr3t-admin-token-value"
    server = server_factory(
        env={"PULLWAKE_ADMIN_TOKEN": secret, "PULLWAKE_RUNNER_TOKENS": f"r1={secret}-r1"}
    )
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.put("/v1/stream/x", headers=JSON).status_code == 401
        headers = {**JSON, "authorization": f"Bearer {secret}"}
        assert client.put("/v1/stream/x", headers=headers).status_code == 201
    server.terminate()
    assert secret not in server.stderr_text()


def test_chunked_body_over_the_limit_is_413(server_factory: ServerFactory) -> None:
    server = server_factory(args=["--max-body-bytes", "1000"])

    def chunks() -> Any:
        for _ in range(100):
            yield b"x" * 100

    with httpx.Client(base_url=server.url, timeout=10) as client:
        binary = {"content-type": "application/octet-stream"}
        assert client.put("/v1/stream/b", headers=binary).status_code == 201
        response = client.post("/v1/stream/b", headers=binary, content=chunks())
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
        assert client.head("/v1/stream/b").headers["stream-next-offset"]


def _setup_claimed_state(client: httpx.Client) -> dict[str, Any]:
    """Streams, a subscription with a partial ack, a live claim and a runner row."""
    client.put("/v1/stream/events/a", headers=JSON)
    client.put("/v1/stream/events/b", headers=JSON)
    sub = {"type": "pull-wake", "pattern": "events/*", "wake_stream": "wake/r1"}
    assert client.put(f"{SUBS}/s1", json=sub).status_code == 201
    first = client.post("/v1/stream/events/a", headers=JSON, content="[1, 2]")
    client.post("/v1/stream/events/b", headers=JSON, content="[3]")
    won = client.post(f"{SUBS}/s1/claim", json={"worker": "r1"}).json()
    partial = {
        "wake_id": won["wake_id"],
        "generation": won["generation"],
        "acks": [{"stream": "events/a", "offset": first.headers["stream-next-offset"]}],
    }
    auth = {"authorization": f"Bearer {won['token']}"}
    assert client.post(f"{SUBS}/s1/ack", json=partial, headers=auth).status_code == 200
    client.post("/v1/runners", json={"id": "r1", "wake_stream": "wake/r1"})
    beat = {"lease_ms": 60_000, "wake_stream_offset": "00000000000000000007", "diagnostics": {}}
    assert client.post("/v1/runners/r1/heartbeat", json=beat).status_code == 200
    return dict(won)


@pytest.mark.parametrize("server_backend", ["asyncio", "trio"])
def test_sigkill_mid_traffic_then_restart_loses_nothing(
    server_factory: ServerFactory, database_url: str, server_backend: str
) -> None:
    server = server_factory(database_url, backend=server_backend)
    acknowledged: list[int] = []
    enough = threading.Event()
    with httpx.Client(base_url=server.url, timeout=5) as client:
        won = _setup_claimed_state(client)
        view_before = client.get(f"{SUBS}/s1").json()
        client.put("/v1/stream/traffic", headers=JSON)

        def produce() -> None:
            with httpx.Client(base_url=server.url, timeout=5) as producer:
                for n in range(10_000):
                    try:
                        response = producer.post("/v1/stream/traffic", headers=JSON, content=str(n))
                    except httpx.TransportError:
                        return
                    assert response.status_code == 204
                    acknowledged.append(n)
                    if len(acknowledged) == 20:
                        enough.set()

        traffic = threading.Thread(target=produce)
        traffic.start()
        try:
            assert enough.wait(timeout=30)
            server.kill()
        finally:
            traffic.join(timeout=30)
    assert not traffic.is_alive()
    assert server.proc is not None
    assert server.proc.returncode == -signal.SIGKILL

    server.restart()
    with httpx.Client(base_url=server.url, timeout=5) as client:
        view_after = client.get(f"{SUBS}/s1").json()
        assert view_after == view_before
        assert view_after["holder"] == "r1"
        assert view_after["generation"] == won["generation"]

        stored = client.get("/v1/stream/traffic", params={"offset": "-1"}).json()
        assert stored[: len(acknowledged)] == acknowledged
        assert stored == list(range(len(stored)))

        runner = client.get("/v1/runners/r1").json()
        assert runner["wake_stream_offset"] == "00000000000000000007"

        # The claim token minted before the crash still works, and finishes the claim.
        tails = {s["path"]: s["tail_offset"] for s in won["streams"]}
        done = {
            "wake_id": won["wake_id"],
            "generation": won["generation"],
            "acks": [{"stream": path, "offset": tail} for path, tail in tails.items()],
            "done": True,
        }
        auth = {"authorization": f"Bearer {won['token']}"}
        finished = client.post(f"{SUBS}/s1/ack", json=done, headers=auth)
        assert finished.status_code == 200, finished.text
        assert finished.json() == {"ok": True, "next_wake": False}
        appended = client.post("/v1/stream/events/a", headers=JSON, content="9")
        assert appended.headers["stream-next-offset"] > tails["events/a"]
        wakes = client.get("/v1/stream/wake/r1", params={"offset": "-1"}).json()
        assert [w["generation"] for w in wakes] == sorted({w["generation"] for w in wakes})
        assert wakes[-1]["generation"] == won["generation"] + 1


@pytest.mark.anyio
@pytest.mark.postgres
async def test_two_processes_share_one_postgres(
    server_factory: ServerFactory, postgres_dsn: str, anyio_backend: str
) -> None:
    a = server_factory(postgres_dsn, backend=anyio_backend, args=["--keepalive", "30"])
    b = server_factory(postgres_dsn, backend=anyio_backend, args=["--keepalive", "30"])
    subs = [f"s{i}" for i in range(8)]
    async with (
        httpx.AsyncClient(base_url=a.url, timeout=10) as via_a,
        httpx.AsyncClient(base_url=b.url, timeout=10) as via_b,
    ):
        await via_a.put("/v1/stream/wake/pool", headers=JSON)
        for sub_id in subs:
            await via_a.put(f"/v1/stream/events/{sub_id}", headers=JSON)
            body = {
                "type": "pull-wake",
                "streams": [f"events/{sub_id}"],
                "wake_stream": "wake/pool",
            }
            assert (await via_b.put(f"{SUBS}/{sub_id}", json=body)).status_code == 201

        # A wake appended through A reaches an SSE reader on B (LISTEN/NOTIFY, no polling).
        params = {"offset": "now", "live": "sse"}
        async with (
            aconnect_sse(via_b, "GET", "/v1/stream/wake/pool", params=params) as source,
            aclosing(source.aiter_sse()) as events,
        ):
            with anyio.fail_after(10):
                first = await events.__anext__()
                assert first.event == "control"
                await via_a.post(f"/v1/stream/events/{subs[0]}", headers=JSON, content="1")
                data = await events.__anext__()
            assert data.event == "data"
            assert [w["subscription_id"] for w in json.loads(data.data)] == [subs[0]]
            assert (await via_a.delete("/v1/stream/wake/pool")).status_code == 204
            with anyio.fail_after(10):
                async for _ in events:
                    pass

        # Concurrent claims through A and B never double-claim.
        await via_a.put("/v1/stream/wake/pool", headers=JSON)
        for sub_id in subs[1:]:
            await via_a.post(f"/v1/stream/events/{sub_id}", headers=JSON, content="1")
        outcomes: dict[str, list[tuple[str, int]]] = {sub_id: [] for sub_id in subs}

        async def claim(client: httpx.AsyncClient, name: str, sub_id: str) -> None:
            response = await client.post(f"{SUBS}/{sub_id}/claim", json={"worker": name})
            outcomes[sub_id].append((name, response.status_code))
            if response.status_code == 409:
                assert response.json()["error"]["code"] == "ALREADY_CLAIMED"

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for sub_id in subs:
                    for _ in range(3):
                        tg.start_soon(claim, via_a, "via-a", sub_id)
                        tg.start_soon(claim, via_b, "via-b", sub_id)
        for sub_id, results in outcomes.items():
            winners = [name for name, status in results if status == 200]
            assert len(winners) == 1, (sub_id, results)
            holder = (await via_b.get(f"{SUBS}/{sub_id}")).json()["holder"]
            assert holder == winners[0]


def test_server_module_runs_as_documented(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pullwake", "server", "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=20,
        env={**os.environ},
    )
    assert result.returncode == 0
    for option in (
        "--database",
        "--host",
        "--port",
        "--keepalive",
        "--token",
        "--runner-token",
        "--backend",
    ):
        assert option in result.stdout


def test_the_sweeper_re_wakes_after_a_lease_expires(server_factory: ServerFactory) -> None:
    server = server_factory(args=["--lease-sweep-interval", "0.1", "--keepalive", "30"])
    with httpx.Client(base_url=server.url, timeout=10) as client:
        client.put("/v1/stream/events/a", headers=JSON)
        client.put("/v1/stream/wake/w", headers=JSON)
        sub = {"type": "pull-wake", "streams": ["events/a"], "wake_stream": "wake/w"}
        assert client.put(f"{SUBS}/s", json={**sub, "lease_ttl_ms": 1000}).status_code == 201
        client.post("/v1/stream/events/a", headers=JSON, content="1")
        won = client.post(f"{SUBS}/s/claim", json={"worker": "gone"}).json()
        tail = client.head("/v1/stream/wake/w").headers["stream-next-offset"]
        # Nobody acks: the sweeper alone must clear the lease and append a new wake.
        params = {"offset": tail, "live": "sse"}
        with client.stream("GET", "/v1/stream/wake/w", params=params) as response:
            for line in response.iter_lines():
                if line.startswith("data:[") and '"wake"' in line:
                    wake = json.loads(line[len("data:") :])[0]
                    break
        assert wake["generation"] == won["generation"] + 1
        assert client.get(f"{SUBS}/s").json()["holder"] is None
        client.delete("/v1/stream/wake/w")


def test_pause_and_resume(server_factory: ServerFactory) -> None:
    server = server_factory()
    with httpx.Client(base_url=server.url, timeout=0.5) as client:
        assert client.get("/healthz").status_code == 200
        server.pause()
        try:
            with pytest.raises(httpx.ReadTimeout):
                client.get("/healthz")
        finally:
            server.resume()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.get("/healthz").status_code == 200
    assert server.terminate() == 0


@pytest.mark.anyio
async def test_serve_in_process_until_stopped(tmp_path: Path, anyio_backend: str) -> None:
    config = ServerConfig(port=0, database_url=f"sqlite:///{tmp_path / 'inproc.db'}")
    announced: list[str] = []
    listening = anyio.Event()
    stop = anyio.Event()

    def announce(url: str) -> None:
        announced.append(url)
        listening.set()

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                partial(serve, config, announce=announce, handle_signals=False, stop=stop)
            )
            await listening.wait()
            async with httpx.AsyncClient(base_url=announced[0], timeout=10) as client:
                assert (await client.put("/v1/stream/x", headers=JSON)).status_code == 201
                assert (await client.get("/healthz")).json() == {"status": "ok"}
            stop.set()
    assert announced[0].startswith("http://127.0.0.1:")
