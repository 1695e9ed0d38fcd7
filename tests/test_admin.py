"""``pullwake stream ...`` and ``pullwake subscription ...`` against a real server process."""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.fixtures.servers import ServerFactory, ServerProcess

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
WAIT = 20.0


def pullwake(
    *args: str, url: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PULLWAKE_URL": url, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "pullwake", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=environment,
        timeout=WAIT,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def server(server_factory: ServerFactory) -> ServerProcess:
    return server_factory(args=["--keepalive", "0.3"])


def test_create_append_and_read_a_json_stream(server: ServerProcess) -> None:
    created = pullwake("stream", "create", "orders/eu", url=server.url)
    again = pullwake("stream", "create", "orders/eu", url=server.url)
    appended = pullwake("stream", "append", "orders/eu", '{"n": 1}', '"two"', "[3]", url=server.url)
    read = pullwake("stream", "read", "orders/eu", url=server.url)
    assert [r.returncode for r in (created, again, appended, read)] == [0, 0, 0, 0]
    assert one_line(created) == "stream orders/eu created"
    assert one_line(again) == "stream orders/eu already exists"
    assert read.stdout.splitlines() == ['{"n":1}', '"two"', "[3]"]
    # The offset it prints reads on from there.
    offset = one_line(read).removeprefix("next offset ")
    pullwake("stream", "append", "orders/eu", "4", url=server.url)
    later = pullwake("stream", "read", "orders/eu", "--offset", offset, url=server.url)
    assert later.stdout.splitlines() == ["4"]


def test_a_text_stream_takes_its_content_type_from_the_server(server: ServerProcess) -> None:
    pullwake("stream", "create", "notes", "--content-type", "text/plain", url=server.url)
    appended = pullwake("stream", "append", "notes", "not json", url=server.url)
    assert appended.returncode == 0, appended.stderr
    assert pullwake("stream", "read", "notes", url=server.url).stdout == "not json\n"


def test_mistakes_get_one_line(server: ServerProcess) -> None:
    missing = pullwake("stream", "append", "nope", "1", url=server.url)
    assert missing.returncode == 1
    assert one_line(missing) == (
        "pullwake stream append: HEAD /v1/stream/nope answered 404: no such stream "
        "(from here: pullwake stream create nope)"
    )
    pullwake("stream", "create", "j", url=server.url)
    not_json = pullwake("stream", "append", "j", "hello", url=server.url)
    assert not_json.returncode == 2
    assert "'hello' is not JSON" in one_line(not_json)
    unknown = pullwake("subscription", "show", "nobody", url=server.url)
    assert unknown.returncode == 1
    assert one_line(unknown).startswith(
        "pullwake subscription show: GET /v1/stream/__ds/subscriptions/nobody answered 404 "
        "SUBSCRIPTION_NOT_FOUND: "
    )
    dots = pullwake("stream", "create", "a/../b", url=server.url)
    assert dots.returncode == 2
    assert "has an empty, '.' or '..' segment" in one_line(dots)
    star = pullwake("stream", "create", "a*b", url=server.url)
    assert star.returncode == 1
    assert "answered 400" in one_line(star)


def test_an_unreachable_server_is_exit_3() -> None:
    result = pullwake("stream", "read", "x", url="http://127.0.0.1:1")
    assert result.returncode == 3
    assert one_line(result).startswith("pullwake stream read: no answer from http://127.0.0.1:1")


def test_a_server_that_is_not_pullwake_gets_one_line(tmp_path: Path) -> None:
    page = tmp_path / "v1" / "stream" / "__ds" / "subscriptions" / "x"
    page.parent.mkdir(parents=True)
    page.write_text("<html><body>Welcome to nginx!</body></html>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as web:
        thread = threading.Thread(target=web.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{web.server_address[1]}"
            ok_page = pullwake("subscription", "show", "x", url=url)
            not_found = pullwake("subscription", "show", "y", url=url)
        finally:
            web.shutdown()
            thread.join(timeout=5)
    assert ok_page.returncode == 1
    assert one_line(ok_page).endswith(
        "answered 200 with no JSON ('<html><body>Welcome to nginx!</body></html>'): is this a "
        "pullwake server?"
    )
    assert not_found.returncode == 1
    assert one_line(not_found).endswith("is this a pullwake server?")


def test_tail_prints_new_messages_as_they_arrive(server: ServerProcess) -> None:
    pullwake("stream", "create", "live", url=server.url)
    pullwake("stream", "append", "live", '"old"', url=server.url)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pullwake", "stream", "tail", "live", "--count", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PULLWAKE_URL": server.url},
    )
    try:
        # Append until the tail has seen two new ones: it starts at "now", so appends made
        # before its SSE connection opened are not printed and the loop keeps appending.
        deadline = time.monotonic() + WAIT
        n = 0
        while proc.poll() is None and time.monotonic() < deadline:
            n += 1
            pullwake("stream", "append", "live", json.dumps({"n": n}), url=server.url)
            time.sleep(0.2)
        stdout, stderr = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    assert proc.returncode == 0, stderr
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert len(lines) == 2
    assert lines[1]["n"] == lines[0]["n"] + 1
    assert "old" not in stdout


def test_subscription_create_show_delete(server: ServerProcess) -> None:
    pullwake("stream", "create", "orders/a", url=server.url)
    created = pullwake(
        "subscription",
        "create",
        "orders",
        "--pattern",
        "orders/*",
        "--wake-stream",
        "wake/w1",
        "--lease-ttl-ms",
        "5000",
        url=server.url,
    )
    assert created.returncode == 0, created.stderr
    view = json.loads(created.stdout)
    assert (view["id"], view["pattern"], view["wake_stream"], view["lease_ttl_ms"]) == (
        "orders",
        "orders/*",
        "wake/w1",
        5000,
    )
    assert [s["path"] for s in view["streams"]] == ["orders/a"]
    # Its wake stream was created with it, so work now wakes it.
    pullwake("stream", "append", "orders/a", '"job"', url=server.url)
    wakes = pullwake("stream", "read", "wake/w1", url=server.url)
    assert [json.loads(line)["subscription_id"] for line in wakes.stdout.splitlines()] == ["orders"]
    shown = pullwake("subscription", "show", "orders", url=server.url)
    assert json.loads(shown.stdout)["id"] == "orders"
    deleted = pullwake("subscription", "delete", "orders", url=server.url)
    assert deleted.returncode == 0
    gone = pullwake("subscription", "show", "orders", url=server.url)
    assert gone.returncode == 1
    neither = pullwake("subscription", "create", "x", "--wake-stream", "w", url=server.url)
    assert neither.returncode == 2
    assert one_line(neither).endswith("give --pattern GLOB or --stream PATH (or both)")


def test_the_admin_token_comes_from_the_option_or_the_environment(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(args=["--admin-token", "adm"])
    refused = pullwake("stream", "create", "s", url=server.url)
    assert refused.returncode == 1
    assert one_line(refused).endswith("(pass the admin token with --token or PULLWAKE_ADMIN_TOKEN)")
    assert pullwake("stream", "create", "s", "--token", "adm", url=server.url).returncode == 0
    env = {"PULLWAKE_ADMIN_TOKEN": "adm"}
    assert pullwake("stream", "append", "s", "1", url=server.url, env=env).returncode == 0
    with httpx.Client(base_url=server.url, headers={"authorization": "Bearer adm"}) as client:
        assert client.get("/v1/stream/s", params={"offset": "-1"}).json() == [1]
