"""The fault proxy itself does what the fault tests rely on, on asyncio and trio."""

from __future__ import annotations

import anyio
import anyio.abc
import pytest

from pullwake.testing import FaultProxy

pytestmark = pytest.mark.anyio


async def echo(stream: anyio.abc.SocketStream) -> None:
    async with stream:
        try:
            async for chunk in stream:
                await stream.send(chunk)
        except (anyio.BrokenResourceError, OSError):
            pass


async def start_echo(tg: anyio.abc.TaskGroup) -> int:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")

    async def serve() -> None:
        async with listener:
            await listener.serve(echo)

    tg.start_soon(serve)
    return int(listener.extra(anyio.abc.SocketAttribute.local_port))


async def test_forwards_then_blackholes_then_forwards_again() -> None:
    async with anyio.create_task_group() as tg:
        port = await start_echo(tg)
        async with FaultProxy("127.0.0.1", port) as proxy:
            conn = await anyio.connect_tcp("127.0.0.1", proxy.port)
            await conn.send(b"ping")
            assert await conn.receive() == b"ping"
            proxy.blackhole()
            await conn.send(b"lost?")
            with anyio.move_on_after(0.3) as scope:
                await conn.receive()
            assert scope.cancelled_caught  # silence: the connection is open, nothing comes
            proxy.forward()
            with anyio.fail_after(5):
                assert await conn.receive() == b"lost?"  # held data flows on
            await conn.aclose()
        tg.cancel_scope.cancel()


async def test_blackhole_accepts_new_connections_and_never_answers() -> None:
    async with anyio.create_task_group() as tg:
        port = await start_echo(tg)
        async with FaultProxy("127.0.0.1", port) as proxy:
            proxy.blackhole()
            conn = await anyio.connect_tcp("127.0.0.1", proxy.port)  # the connect succeeds
            await conn.send(b"hello")
            with anyio.move_on_after(0.3) as scope:
                await conn.receive()
            assert scope.cancelled_caught
            assert proxy.statistics().accepted == 1
            await conn.aclose()
        tg.cancel_scope.cancel()


async def test_reset_aborts_and_close_ends_cleanly() -> None:
    async with anyio.create_task_group() as tg:
        port = await start_echo(tg)
        async with FaultProxy("127.0.0.1", port) as proxy:
            conn = await anyio.connect_tcp("127.0.0.1", proxy.port)
            await conn.send(b"x")
            assert await conn.receive() == b"x"
            await proxy.reset()
            with anyio.fail_after(5), pytest.raises((anyio.BrokenResourceError, ConnectionError)):
                await conn.receive()
            await conn.aclose()

            conn = await anyio.connect_tcp("127.0.0.1", proxy.port)
            await conn.send(b"y")
            assert await conn.receive() == b"y"
            await proxy.close()
            with anyio.fail_after(5), pytest.raises(anyio.EndOfStream):
                await conn.receive()
            await conn.aclose()
            stats = proxy.statistics()
            assert (stats.resets, stats.closes) == (2, 2)  # client side and upstream each
        tg.cancel_scope.cancel()


async def test_refuse_then_accept_again_on_the_same_port() -> None:
    async with anyio.create_task_group() as tg:
        port = await start_echo(tg)
        async with FaultProxy("127.0.0.1", port) as proxy:
            listening_port = proxy.port
            await proxy.refuse()
            with pytest.raises(OSError, match=r"(?i)connection attempts failed|refused"):
                await anyio.connect_tcp("127.0.0.1", listening_port)
            await proxy.accept_again()
            assert proxy.port == listening_port
            conn = await anyio.connect_tcp("127.0.0.1", proxy.port)
            await conn.send(b"back")
            assert await conn.receive() == b"back"
            await conn.aclose()
        tg.cancel_scope.cancel()
