"""Measure the floor: the cheapest HTTP round trip over loopback on this machine.

Run alone: ``.venv/bin/python bench/floor.py``. A child process (this script with ``--serve``)
answers every request on a keep-alive connection with a fixed ``200 OK`` from a blocking
socket loop; the parent sends a minimal ``GET`` and reads the answer, also with a blocking
socket (TCP_NODELAY on both sides). That is one HTTP exchange with no framework, no parser and
no event loop: no wake path can be faster than one of these, and a wake needs at least two
(the append, then the claim) plus the SSE push. For scale it also times the same exchange
with httpx's ``AsyncClient`` (the runner's HTTP client) on asyncio, against the same child.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time

import anyio
import httpx
from figures import Report, arguments, parse, percentile

REQUEST = b"GET /floor HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
SAMPLES = 3000
WARMUP = 300


def serve() -> None:
    """Answer requests forever, one connection at a time (the child process)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    print(listener.getsockname()[1], flush=True)
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = b""
        with conn:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                buffer += chunk
                while b"\r\n\r\n" in buffer:
                    _, buffer = buffer.split(b"\r\n\r\n", 1)
                    conn.sendall(ANSWER)


def raw_round_trips(port: int, samples: int) -> list[float]:
    """Return ``samples`` round-trip times in ms over one blocking keep-alive connection."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        times = []
        for i in range(samples + WARMUP):
            t0 = time.perf_counter()
            sock.sendall(REQUEST)
            got = b""
            while not got.endswith(b"ok"):
                got += sock.recv(65536)
            if i >= WARMUP:
                times.append((time.perf_counter() - t0) * 1000)
    return times


async def httpx_round_trips(port: int, samples: int) -> list[float]:
    times = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        for i in range(samples + WARMUP):
            t0 = time.perf_counter()
            response = await client.get("/floor")
            response.read()
            if i >= WARMUP:
                times.append((time.perf_counter() - t0) * 1000)
    return times


def main() -> int:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parse(parser)
    if args.serve:
        serve()
        return 0
    report = Report("floor.py", args)
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        samples = SAMPLES // 5 if args.quick else SAMPLES
        raw = [raw_round_trips(port, samples) for _ in range(args.runs)]
        report.add(
            "floor.raw.p50",
            "loopback HTTP round trip, raw sockets, p50",
            "ms",
            [percentile(r, 50) for r in raw],
            digits=3,
        )
        report.add(
            "floor.raw.p99",
            "loopback HTTP round trip, raw sockets, p99",
            "ms",
            [percentile(r, 99) for r in raw],
            digits=3,
        )
        client = [anyio.run(httpx_round_trips, port, samples // 3) for _ in range(args.runs)]
        report.add(
            "floor.httpx.p50",
            "same round trip with httpx.AsyncClient (asyncio), p50",
            "ms",
            [percentile(r, 50) for r in client],
            digits=3,
        )
        report.note(
            f"each run: {samples} raw or {samples // 3} httpx exchanges after {WARMUP} warm-up "
            "ones, on one keep-alive connection to a blocking-socket server in another process"
        )
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    report.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
