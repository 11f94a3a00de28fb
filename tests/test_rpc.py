"""RPC over real processes: results, exceptions, events, faults, cancellation, close, leaks.

Every wait has its own deadline (``_run`` and the ``timeout=`` arguments); synchronisation with
the worker uses events it sends (a handshake), never sleeps.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import pytest

import anyfork
import rpc_funcs
from helpers import run


class Events:
    """Collects on_event calls; ``wait(pred)`` waits (with a deadline) until one matches."""

    def __init__(self, log: list[Any] | None = None) -> None:
        self.items: list[tuple[Any, ...]] = []
        self.log = log
        self._changed: asyncio.Event | None = None

    def __call__(self, *args: Any) -> None:
        self.items.append(args)
        if self.log is not None:
            self.log.append(("event", *args))
        if self._changed is not None:
            self._changed.set()

    async def wait(self, pred: Callable[[list[tuple[Any, ...]]], bool]) -> None:
        self._changed = asyncio.Event()
        while not pred(self.items):
            self._changed.clear()
            await asyncio.wait_for(self._changed.wait(), 10)


async def _client(func: Any, proc: anyfork.Process | None = None, **kw: Any) -> anyfork.Client:
    kw.setdefault("timeout", 10)
    return await anyfork.rpc(proc if proc is not None else anyfork.new(), func, **kw)


# -- results and arguments ----------------------------------------------------------------------


def test_call_result_and_close() -> None:
    closes: list[int] = []

    async def main() -> None:
        client = await _client(rpc_funcs.add, on_close=lambda: closes.append(1))
        assert await client(1, 2) == 3
        assert await client("a", b="b") == "ab"
        assert await client.call(2, b=3, timeout=10) == 5
        results = await asyncio.gather(*(client(i, 1) for i in range(200)))
        assert results == list(range(1, 201))
        await client.aclose(timeout=10)
        assert closes == [1]
        assert client.returncode == 0
        with pytest.raises(anyfork.ClosedError):
            await client(1)
        await client.aclose()  # idempotent
        assert closes == [1]

    run(main())


@pytest.mark.parametrize("backend", ["sync", "async"])
def test_worker_stays_lean(backend: str) -> None:
    async def main() -> None:
        async with await _client("rpc_funcs:worker_facts", backend=backend) as client:
            facts = await client()
            assert facts["asyncio"] is (backend == "async")

    run(main())


def test_new_exec_worker_and_exit_status() -> None:
    async def main() -> None:
        client = await _client("rpc_funcs:exit_now", anyfork.new_exec(), on_event=Events())
        with pytest.raises(anyfork.WorkerDiedError) as info:
            await client("os._exit", 5)
        assert info.value.returncode == 5
        await client.aclose(timeout=10)

    run(main())


def test_init_gets_args_and_fds() -> None:
    r, w = os.pipe()
    try:

        async def main() -> None:
            proc = anyfork.new().send_arg("s", b"b").send_fh(r)
            async with await _client(
                "rpc_funcs:init_types", proc, init="rpc_funcs:init_store"
            ) as c:
                assert await c() == ["'s'", "b'b'", "FileIO"]

        run(main())
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize(
    ("serializer", "args", "expected"),
    [
        ("pickle", ((1, 2), {"k": {3}}), ([(1, 2)], {"k": {3}})),
        ("json", ((1, 2), {"k": [3]}), [[[1, 2]], {"k": [3]}]),
        ("test_rpc_wire:Marshal", ((1,), {}), ([(1,)], {})),
    ],
)
def test_serializers(serializer: str, args: Any, expected: Any) -> None:
    async def main() -> None:
        async with await _client("rpc_funcs:echo", serializer=serializer) as client:
            assert await client(args[0], **args[1]) == expected

    run(main())


@pytest.mark.parametrize(("serializer", "value"), [("bytes", b"abc"), ("str", "abc")])
def test_raw_serializers(serializer: str, value: Any) -> None:
    async def main() -> None:
        async with await _client("rpc_funcs:upper", serializer=serializer) as client:
            assert await client(value) == value.upper()
            with pytest.raises(anyfork.EncodeError):
                await client(value, value)
            assert await client(value) == value.upper()

    run(main())


# -- exceptions -----------------------------------------------------------------------------------


def test_exception_fails_only_that_call() -> None:
    async def main() -> None:
        async with await _client("rpc_funcs:boom") as client:
            with pytest.raises(ValueError, match="bad value") as info:
                await client("value", "bad value")
            assert isinstance(info.value.__cause__, anyfork.RemoteTraceback)
            assert "in boom" in info.value.__cause__.text
            with pytest.raises(rpc_funcs.CustomError, match="custom"):
                await client("custom", "custom")
            with pytest.raises(anyfork.RemoteError) as remote:
                await client("unrebuildable", "m")
            assert remote.value.type_name == "rpc_funcs.Unrebuildable"
            assert "Unrebuildable" in remote.value.remote_traceback
            with pytest.raises(ValueError, match="again"):
                await client("value", "again")

    run(main())


def test_unpicklable_argument_fails_in_parent() -> None:
    async def main() -> None:
        async with await _client("rpc_funcs:ident") as client:
            with pytest.raises(anyfork.EncodeError) as info:
                await client(lambda: None)
            assert info.value.side == "parent"
            assert await client(7) == 7

    run(main())


def test_unpicklable_result_fails_in_child() -> None:
    async def main() -> None:
        async with await _client("rpc_funcs:unpicklable_result") as client:
            with pytest.raises(anyfork.EncodeError, match="cannot encode the result") as info:
                await client()
            assert info.value.side == "child"
            with pytest.raises(anyfork.EncodeError):
                await client()

    run(main())


def test_large_payload_both_ways() -> None:
    big = os.urandom(1024) * (20 * 1024)  # 20 MiB

    async def main() -> None:
        async with await _client("rpc_funcs:ident") as client:
            assert await client(big) == big
            assert await client(bytearray(big)) == bytearray(big)
            assert await client(1) == 1

    run(main())


# -- start-up failures ----------------------------------------------------------------------------


def test_bad_function_name_at_startup() -> None:
    async def main() -> None:
        with pytest.raises(AttributeError, match="no_such_function"):
            await _client("rpc_funcs:no_such_function")
        with pytest.raises(ModuleNotFoundError):
            await _client("no_such_module_xyz:f")

    run(main())


def test_init_failure_at_startup() -> None:
    async def main() -> None:
        proc = anyfork.new().send_arg("x")
        with pytest.raises(rpc_funcs.CustomError, match="init failed with 1 args") as info:
            await _client("rpc_funcs:add", proc, init="rpc_funcs:init_fail")
        assert isinstance(info.value.__cause__, anyfork.RemoteTraceback)

    run(main())


def test_event_in_init_is_an_error() -> None:
    async def main() -> None:
        with pytest.raises(RuntimeError, match="only in an RPC worker"):
            await _client("rpc_funcs:add", init="rpc_funcs:event_in_init")

    run(main())


def test_startup_death_is_spawn_error() -> None:
    async def main() -> None:
        proc = anyfork.new().eval("import os\ndef die(*a):\n    os._exit(3)\n")
        with pytest.raises(anyfork.SpawnError, match="exit status 3"):
            await _client("rpc_funcs:add", proc, init="die")

    run(main())


def test_missing_optional_serializer_fails_before_spawning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # msgpack is installed for the suite: make it unimportable here (None in sys.modules makes
    # ``import msgpack`` raise ImportError), as on a machine without it.
    monkeypatch.setitem(sys.modules, "msgpack", None)

    async def main() -> None:
        proc = anyfork.new()
        with pytest.raises(ImportError, match="pip install msgpack"):
            await anyfork.rpc(proc, "rpc_funcs:add", serializer="msgpack")
        proc.close()

    run(main())


# -- events and ordering ---------------------------------------------------------------------------


def test_sync_events_and_results_in_order() -> None:
    log: list[Any] = []

    async def one(client: anyfork.Client, i: int) -> None:
        log.append(("result", await client(i, 3)))

    async def main() -> None:
        async with await _client("rpc_funcs:progress", on_event=Events(log)) as client:
            await asyncio.gather(*(one(client, i) for i in range(5)))

    run(main())
    expected = []
    for i in range(5):
        expected += [("event", "progress", i, k) for k in range(3)] + [("result", i)]
    assert log == expected


def test_async_events_and_results_in_child_order() -> None:
    seqs: list[int] = []

    def on_event(tag: str, seq: int) -> None:
        seqs.append(seq)

    async def one(client: anyfork.Client, i: int) -> None:
        got, seq = await client(i, 4)
        assert got == i
        seqs.append(seq)

    async def main() -> None:
        async with await _client("rpc_funcs:aprogress", backend="async", on_event=on_event) as c:
            await asyncio.gather(*(one(c, i) for i in range(10)))

    run(main())
    assert seqs == list(range(1, 51))


def test_blocking_client_events_in_order() -> None:
    log: list[Any] = []
    with anyfork.rpc_blocking(
        anyfork.new(), "rpc_funcs:progress", on_event=Events(log), timeout=10
    ) as client:
        log.extend(("result", client(i, 2)) for i in range(3))
    expected = []
    for i in range(3):
        expected += [("event", "progress", i, k) for k in range(2)] + [("result", i)]
    assert log == expected


def test_async_flush_before_exit_delivers_event() -> None:
    async def main() -> None:
        events = Events()
        client = await _client("rpc_funcs:event_flush_exit", backend="async", on_event=events)
        with pytest.raises(anyfork.WorkerDiedError) as info:
            await client(9)
        assert info.value.returncode == 9
        assert events.items == [("bye",)]
        await client.aclose(timeout=10)

    run(main())


def test_sync_flush_is_a_noop() -> None:
    async def main() -> None:
        async with await _client("rpc_funcs:sync_flush") as client:
            assert await client() is True

    run(main())


# -- concurrency --------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 3])
def test_async_concurrency_limit(limit: int) -> None:
    r, w = os.pipe()
    try:

        async def main() -> None:
            events = Events()
            proc = anyfork.new().send_fh(r)
            client = await _client(
                "rpc_funcs:hold",
                proc,
                backend="async",
                init="rpc_funcs:init_gate",
                concurrency=limit,
                on_event=events,
            )
            async with client:
                calls = [asyncio.ensure_future(client(i)) for i in range(7)]
                # The first `limit` calls start and hold; the others must wait for them.
                await events.wait(lambda items: len(items) >= limit)
                os.write(w, b"x" * 7)
                assert sorted(await asyncio.gather(*calls)) == list(range(7))
                assert await client(-1) == limit  # the most calls that ever ran at once
            assert len(events.items) == 7

        run(main())
    finally:
        os.close(r)
        os.close(w)


# -- faults ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sync", "async"])
def test_kill_9_mid_call_fails_all_outstanding(backend: str) -> None:
    func = "rpc_funcs:block" if backend == "sync" else "rpc_funcs:wait_forever"
    errors: list[BaseException] = []
    closes: list[int] = []

    async def main() -> None:
        events = Events()
        client = await _client(
            func,
            backend=backend,
            on_event=events,
            on_error=errors.append,
            on_close=lambda: closes.append(1),
        )
        calls = [asyncio.ensure_future(client(f"c{i}")) for i in range(3)]
        await events.wait(lambda items: len(items) >= 1)  # a call is running in the worker
        assert client.pid is not None
        os.kill(client.pid, signal.SIGKILL)
        results = await asyncio.gather(*calls, return_exceptions=True)
        for exc in results:
            assert isinstance(exc, anyfork.WorkerDiedError)
            assert exc.pid == client.pid
            assert exc.returncode == -signal.SIGKILL
            assert exc.signal == signal.SIGKILL
        with pytest.raises(anyfork.WorkerDiedError):
            await client("after")
        await client.aclose(timeout=10)

    run(main())
    assert len(errors) == 1
    assert isinstance(errors[0], anyfork.WorkerDiedError)
    assert closes == []


@pytest.mark.parametrize(
    ("how", "code", "returncode"),
    [("os._exit", 3, 3), ("sys.exit", 4, 4), ("segfault", 0, -signal.SIGSEGV)],
)
def test_worker_exits_mid_call(how: str, code: int, returncode: int) -> None:
    async def main() -> None:
        events = Events()
        client = await _client("rpc_funcs:exit_now", on_event=events)
        with pytest.raises(anyfork.WorkerDiedError) as info:
            await client(how, code)
        assert info.value.returncode == returncode
        assert "died with calls outstanding" in str(info.value)
        assert events.items == [("exiting", how)]
        await client.aclose(timeout=10)

    run(main())


def test_blocking_client_worker_death() -> None:
    client = anyfork.rpc_blocking(
        anyfork.new(), "rpc_funcs:exit_now", on_event=Events(), timeout=10
    )
    with pytest.raises(anyfork.WorkerDiedError) as info:
        client.call("os._exit", 6, timeout=10)
    assert info.value.returncode == 6
    with pytest.raises(anyfork.WorkerDiedError):
        client("os._exit", 6)
    client.close(timeout=10)


# -- cancellation and timeouts ------------------------------------------------------------------


def test_sync_timeout_kills_worker() -> None:
    async def main() -> None:
        events = Events()
        client = await _client("rpc_funcs:block", on_event=events)
        other = asyncio.ensure_future(client("second"))
        with pytest.raises(TimeoutError):
            await client.call("first", timeout=0.2)  # block() never returns
        with pytest.raises(anyfork.WorkerDiedError, match="timed out") as info:
            await asyncio.wait_for(other, 10)
        assert info.value.returncode == -signal.SIGKILL
        await client.aclose(timeout=10)

    run(main())


def test_sync_cancel_kills_worker() -> None:
    async def main() -> None:
        events = Events()
        client = await _client("rpc_funcs:block", on_event=events)
        call = asyncio.ensure_future(client("first"))
        await events.wait(lambda items: len(items) >= 1)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        with pytest.raises(anyfork.WorkerDiedError, match="cancelled"):
            await client("next")  # refused, unsent: the worker has been killed
        await client.aclose(timeout=10)

    run(main())


def test_async_cancel_and_timeout_cancel_child_task() -> None:
    async def main() -> None:
        events = Events()
        client = await _client("rpc_funcs:wait_forever", backend="async", on_event=events)
        async with client:
            call = asyncio.ensure_future(client("a"))
            await events.wait(lambda items: len(items) >= 1)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            with pytest.raises(TimeoutError):
                await client.call("b", timeout=0.2)
            with pytest.raises(TimeoutError):
                await client.call("c", timeout=0)
            # The worker is alive and cancelled every one of them.
            events.items.clear()
            call = asyncio.ensure_future(client("d"))
            await events.wait(lambda items: ("waiting", "d") in items)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call

    run(main())


def test_blocking_timeout_sync_kills_async_cancels() -> None:
    client = anyfork.rpc_blocking(
        anyfork.new(), "rpc_funcs:wait_forever", backend="async", on_event=Events(), timeout=10
    )
    with client:
        with pytest.raises(TimeoutError):
            client.call("x", timeout=0.1)
        with pytest.raises(TimeoutError):
            client.call("y", timeout=0.1)
    client = anyfork.rpc_blocking(anyfork.new(), "rpc_funcs:block", on_event=Events(), timeout=10)
    with pytest.raises(TimeoutError):
        client.call("x", timeout=0.1)
    with pytest.raises((anyfork.WorkerDiedError, anyfork.ClosedError)):
        client("y")
    client.close(timeout=10)


def test_close_lets_outstanding_calls_finish() -> None:
    closes: list[int] = []

    async def main() -> None:
        client = await _client(
            "rpc_funcs:progress", on_event=Events(), on_close=lambda: closes.append(1)
        )
        calls = [asyncio.ensure_future(client(i, 1)) for i in range(20)]
        close = asyncio.ensure_future(client.aclose(timeout=10))
        assert await asyncio.gather(*calls) == list(range(20))
        await close
        assert client.returncode == 0

    run(main())
    assert closes == [1]


def test_abort_fails_outstanding_calls() -> None:
    async def main() -> None:
        events = Events()
        client = await _client("rpc_funcs:block", on_event=events)
        call = asyncio.ensure_future(client("x"))
        await events.wait(lambda items: len(items) >= 1)
        client.abort()
        with pytest.raises(anyfork.ClosedError):
            await call
        assert client.pid is not None
        os.kill(client.pid, signal.SIGKILL)  # block() would never see the EOF

    run(main())
