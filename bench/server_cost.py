"""Measure server CPU per request: pullwake, the reference server, and a bare hypercorn app.

Run alone: ``.venv/bin/python bench/server_cost.py``.
The throughput of one server process is bounded by the CPU each request costs it, so this
script sends requests one at a time on one keep-alive connection (the raw client of
:mod:`wire`) and divides the server process's CPU time by the number of requests:

- ``HEAD`` on a stream (one store read in pullwake);
- ``POST`` append of one small JSON message to a stream with no subscription;
- the same ``HEAD`` path on a bare ASGI app served by hypercorn with pullwake's settings (this
  script with ``--serve-bare``): what the ASGI server alone costs, the floor under pullwake's
  per-request cost, since hypercorn is the server pullwake must use (it runs on asyncio and
  trio).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time

import anyio
import wire
from figures import Report, arguments
from machine import CpuMeter
from servers import TITLES, target

REQUESTS = 1000
WARMUP = 100


def serve_bare() -> None:
    """Serve an ASGI app that answers 200 with no body, on hypercorn (asyncio)."""
    import asyncio

    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    async def app(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    print(sock.getsockname()[1], flush=True)
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    config.include_server_header = False
    config.keep_alive_timeout = 5.0
    asyncio.run(serve(app, config))  # type: ignore[arg-type]


async def per_request(url: str, pid: int, method: str, path: str, runs: int) -> list[float]:
    """Return, per run, the server's CPU (µs) per request over ``REQUESTS`` requests."""
    figures = []
    async with await wire.connect(url) as http:

        async def send(i: int) -> wire.Answer:
            if method == "POST":
                return await http.post_json(path, {"i": i})
            return await http.request(method, path)

        for i in range(WARMUP):
            await send(i)
        meter = CpuMeter(pid)
        for _ in range(runs):
            meter.lap()
            for i in range(REQUESTS):
                answer = await send(i)
                if answer.status >= 300:
                    raise RuntimeError(f"{method} {path}: {answer}")
            figures.append(1e6 * meter.lap() / REQUESTS)
    return figures


async def prepare(url: str) -> None:
    async with await wire.connect(url) as http:
        answer = await http.put_json("/v1/stream/cost/plain")
        if answer.status not in (200, 201):
            raise RuntimeError(f"PUT: {answer}")


def main() -> int:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare()
        return 0
    report = Report("server_cost.py", args)
    bare = subprocess.Popen(
        [sys.executable, __file__, "--serve-bare"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert bare.stdout is not None
        port = int(bare.stdout.readline())
        time.sleep(0.3)
        runs = anyio.run(per_request, f"http://127.0.0.1:{port}", bare.pid, "HEAD", "/", args.runs)
        report.add(
            "server_cost.bare.head", "bare ASGI app on hypercorn: HEAD", "µs CPU", runs, digits=0
        )
    finally:
        bare.kill()
        bare.wait()
        if bare.stdout is not None:
            bare.stdout.close()
    for name in ("sqlite", "reference"):
        with target(name) as server:
            anyio.run(prepare, server.url)
            for method, what in (("HEAD", "HEAD a stream"), ("POST", "append one message")):
                runs = anyio.run(
                    per_request, server.url, server.pid, method, "/v1/stream/cost/plain", args.runs
                )
                report.add(
                    f"server_cost.{name}.{method.lower()}",
                    f"{TITLES[name]}: {what}",
                    "µs CPU",
                    runs,
                    digits=0,
                )
    report.note(
        f"each run: {REQUESTS} requests one at a time on one keep-alive connection after "
        f"{WARMUP} warm-up ones; the server process's CPU time divided by the requests"
    )
    report.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
