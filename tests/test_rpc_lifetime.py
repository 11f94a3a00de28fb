"""Client lifetime and batches: a client dropped without aclose()/close() closes its
connection (the worker exits); ``map`` keeps the order of its calls and their errors,
and abandons what is left when it is cancelled or times out.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest

import anyfork
from helpers import alive, eventually, run


def _worker_gone(pid: int) -> None:
    eventually(lambda: not alive(pid), timeout=10, what=f"worker {pid} to exit")


def test_dropped_client_closes_its_connection() -> None:
    async def main() -> None:
        client = await anyfork.rpc(anyfork.new(), "rpc_funcs:add", timeout=10)
        assert list(await asyncio.gather(client(1, 2), client(3, 4))) == [3, 7]
        pid = client.pid
        assert pid is not None
        ref = weakref.ref(client)
        del client
        # Freed by reference counting alone: the loop's reader does not keep it alive, and
        # no reference cycle does either.
        assert ref() is None
        _worker_gone(pid)  # it saw EOF and exited (the conftest checks the fds too)

    run(main())


def test_pending_call_keeps_its_client_alive() -> None:
    async def main() -> None:
        client = await anyfork.rpc(anyfork.new(), "rpc_funcs:add", timeout=10)
        ref = weakref.ref(client)
        fut = client(20, 22)
        del client
        gc.collect()
        assert ref() is not None  # the outstanding call holds it
        assert await fut == 42
        del fut
        assert ref() is None

    run(main())


def test_dropped_blocking_client_closes_its_connection() -> None:
    client = anyfork.rpc_blocking(anyfork.new(), "rpc_funcs:add", timeout=10)
    assert client(1, 2) == 3
    pid = client.pid
    assert pid is not None
    ref = weakref.ref(client)
    del client
    assert ref() is None
    _worker_gone(pid)


@pytest.mark.parametrize("backend", ["sync", "async"])
def test_map_keeps_order_and_raises_the_first_error(backend: Any) -> None:
    async def main() -> None:
        async with await anyfork.rpc(
            anyfork.new(), "rpc_funcs:add", backend=backend, timeout=10
        ) as client:
            assert await client.map(range(1000), range(1000)) == [2 * i for i in range(1000)]
            assert await client.map([]) == []
            with pytest.raises(TypeError, match="can only concatenate"):  # "x" + 1, not None + 1
                await client.map([1, "x", 2, None], [1, 1, 1, 1])
            assert await client.map([5]) == [5]  # still usable
            with pytest.raises(anyfork.EncodeError):
                await client.map([1, lambda: None])  # in the parent: not sent
            assert await client(1, 1) == 2

    run(main())


def test_blocking_map() -> None:
    with anyfork.rpc_blocking(anyfork.new(), "rpc_funcs:add", timeout=10) as client:
        assert client.map(range(500), range(500)) == [2 * i for i in range(500)]
        with pytest.raises(TypeError):
            client.map([1, None])
        assert client(2, 3) == 5


def test_async_map_timeout_cancels_the_rest_and_the_worker_keeps_serving() -> None:
    async def main() -> None:
        events: list[Any] = []
        seen = asyncio.Event()

        def on_event(*args: Any) -> None:
            events.append(args)
            seen.set()

        async with await anyfork.rpc(
            anyfork.new(), "rpc_funcs:wait_forever", backend="async", on_event=on_event, timeout=10
        ) as client:
            with pytest.raises(TimeoutError):
                await client.map(["a", "b", "c"], timeout=0.2)
            task = asyncio.ensure_future(client.map(["d", "e"]))
            while ("waiting", "d") not in events:  # the worker still serves
                seen.clear()
                await asyncio.wait_for(seen.wait(), 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    run(main())


def test_sync_map_cancel_kills_the_worker() -> None:
    async def main() -> None:
        client = await anyfork.rpc(
            anyfork.new(), "rpc_funcs:block", on_event=lambda *a: None, timeout=10
        )
        with pytest.raises(TimeoutError):
            await client.map(["x", "y"], timeout=0.2)
        with pytest.raises(anyfork.WorkerDiedError, match="timed out"):
            await client.call("z", timeout=10)
        await client.aclose(timeout=10)

    run(main())


def test_cancelled_call_future_abandons_the_call() -> None:
    async def main() -> None:
        events: list[Any] = []
        seen = asyncio.Event()

        def on_event(*args: Any) -> None:
            events.append(args)
            seen.set()

        async with await anyfork.rpc(
            anyfork.new(), "rpc_funcs:wait_forever", backend="async", on_event=on_event, timeout=10
        ) as client:
            fut = client("a")
            await asyncio.wait_for(seen.wait(), 10)
            assert fut.cancel()
            with pytest.raises(asyncio.CancelledError):
                await fut
            assert await client.map([]) == []

    run(main())


def test_first_rpc_primes_the_template_for_later_workers() -> None:
    import anyfork
    from helpers import recv_all

    code = (
        "import sys\n"
        "loaded = 'anyfork._child._rpc_server' in sys.modules\n"
        "def f(sock):\n"
        "    sock.sendall(str(loaded).encode())\n"
    )
    # A fresh interpreter: a template forked from the default one may be primed already.
    with anyfork.new_exec() as tmpl:
        before = tmpl.fork().eval(code).run_blocking("f", timeout=10)
        with before:
            assert recv_all(before) == b"False"
        client = tmpl.fork().rpc_blocking("json:dumps", timeout=10)
        assert client([1]) == "[1]"
        client.close()
        # Workers forked after the first rpc() start with the RPC server already imported.
        after = tmpl.fork().eval(code).run_blocking("f", timeout=10)
        with after:
            assert recv_all(after) == b"True"


def test_timeouts_are_the_builtin_timeout_error() -> None:
    """Also on 3.10, where asyncio.wait_for raises asyncio.TimeoutError, a class of its own."""
    import asyncio
    import functools
    import os

    import anyfork
    from helpers import alive, eventually

    def gone(pid: int) -> bool:
        return not alive(pid)

    gate_code = "def gate(f):\n    f.read(1)\n"

    async def main(r: int) -> tuple[int, int]:
        # Start-up: init blocks on a pipe we never write to before the deadline.
        proc = anyfork.new().send_fh(r).eval(gate_code)
        try:
            await proc.rpc("json:dumps", init="gate", timeout=0.3)
        except TimeoutError:
            pass
        else:
            raise AssertionError("rpc() did not time out")
        first = proc.pid
        # Close: a call that blocks on the pipe keeps the worker from finishing in time.
        blocker = (
            await anyfork.new()
            .send_fh(r)
            .eval(
                "import anyfork.worker\ngate_file = anyfork.worker.take_args()[0]\n"
                "def wait(x):\n    return gate_file.read(1)\n"
            )
            .rpc("wait", timeout=10)
        )
        call = asyncio.ensure_future(blocker(1))
        try:
            await blocker.aclose(timeout=0.3)
        except TimeoutError:
            pass
        else:
            raise AssertionError("aclose() did not time out")
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
        assert first is not None
        assert blocker.pid is not None
        return first, blocker.pid

    r, w = os.pipe()
    try:
        pids = asyncio.run(main(r))
    finally:
        os.close(w)
        os.close(r)
    for pid in pids:
        eventually(functools.partial(gone, pid), what=f"pid {pid} to exit")
