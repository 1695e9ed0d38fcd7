"""Measure server CPU per request: pullwake on each HTTP server, the reference server, and a
bare ASGI app on each HTTP server.

Run alone: ``.venv/bin/python bench/server_cost.py``.
The throughput of one server process is bounded by the CPU each request costs it, so this
script sends requests one at a time on one keep-alive connection (the raw client of
:mod:`wire`) and divides the server process's CPU time by the number of requests:

- ``HEAD`` on a stream (one store read in pullwake);
- ``POST`` append of one small JSON message to a stream with no subscription;
- pullwake on SQLite as shipped (uvicorn with httptools on asyncio), with
  ``--http hypercorn`` on asyncio, and on trio (``--backend trio``: hypercorn on trio);
- the same ``HEAD`` path on a bare ASGI app (this script with ``--serve-bare uvicorn`` or
  ``--serve-bare hypercorn``, pullwake's settings): what the HTTP server alone costs, the floor
  under pullwake's per-request cost on it.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time

import anyio
import wire
from figures import Report, arguments, parse
from machine import CpuMeter
from servers import TITLES, target

REQUESTS = 1000
WARMUP = 100


def serve_bare(kind: str) -> None:
    """Serve an ASGI app that answers 200 with no body, on uvicorn or hypercorn (asyncio)."""
    import asyncio

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
    if kind == "uvicorn":
        import uvicorn

        from pullwake.server.http_uvicorn import UVICORN_SETTINGS

        config = uvicorn.Config(app, fd=sock.fileno(), http="httptools", **UVICORN_SETTINGS)
        uvicorn.Server(config).run()
        return
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    hyper = Config()
    hyper.bind = [f"fd://{sock.detach()}"]
    hyper.accesslog = None
    hyper.include_server_header = False
    hyper.keep_alive_timeout = 5.0
    asyncio.run(serve(app, hyper))  # type: ignore[arg-type]


async def per_request(
    url: str, pid: int, method: str, path: str, runs: int, requests: int = REQUESTS
) -> list[float]:
    """Return, per run, the server's CPU (µs) per request over ``requests`` requests."""
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
            for i in range(requests):
                answer = await send(i)
                if answer.status >= 300:
                    raise RuntimeError(f"{method} {path}: {answer}")
            figures.append(1e6 * meter.lap() / requests)
    return figures


async def prepare(url: str) -> None:
    async with await wire.connect(url) as http:
        answer = await http.put_json("/v1/stream/cost/plain")
        if answer.status not in (200, 201):
            raise RuntimeError(f"PUT: {answer}")


def bare_figures(kind: str, runs: int, requests: int) -> list[float]:
    bare = subprocess.Popen(
        [sys.executable, __file__, "--serve-bare", kind],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert bare.stdout is not None
        port = int(bare.stdout.readline())
        time.sleep(0.3)
        return anyio.run(
            per_request, f"http://127.0.0.1:{port}", bare.pid, "HEAD", "/", runs, requests
        )
    finally:
        bare.kill()
        bare.wait()
        if bare.stdout is not None:
            bare.stdout.close()


#: (figure key, server name, pullwake server arguments, title)
SERVERS = (
    ("sqlite", "sqlite", (), TITLES["sqlite"]),
    ("sqlite_hypercorn", "sqlite", ("--http", "hypercorn"), "pullwake (SQLite) on hypercorn"),
    ("sqlite_trio", "sqlite", ("--backend", "trio"), "pullwake (SQLite) on trio"),
    ("reference", "reference", (), TITLES["reference"]),
)


def main() -> int:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--serve-bare", choices=["uvicorn", "hypercorn"], help=argparse.SUPPRESS)
    args = parse(parser)
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return 0
    report = Report("server_cost.py", args)
    requests = REQUESTS // 3 if args.quick else REQUESTS
    for kind in ("uvicorn", "hypercorn"):
        report.add(
            f"server_cost.bare_{kind}.head",
            f"bare ASGI app on {kind}: HEAD",
            "µs CPU",
            bare_figures(kind, args.runs, requests),
            digits=0,
        )
    for key, name, server_args, title in SERVERS:
        with target(name, server_args=server_args) as server:
            anyio.run(prepare, server.url)
            for method, what in (("HEAD", "HEAD a stream"), ("POST", "append one message")):
                runs = anyio.run(
                    per_request,
                    server.url,
                    server.pid,
                    method,
                    "/v1/stream/cost/plain",
                    args.runs,
                    requests,
                )
                report.add(
                    f"server_cost.{key}.{method.lower()}",
                    f"{title}: {what}",
                    "µs CPU",
                    runs,
                    digits=0,
                )
    report.note(
        f"each run: {requests} requests one at a time on one keep-alive connection after "
        f"{WARMUP} warm-up ones; the server process's CPU time divided by the requests"
    )
    report.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
