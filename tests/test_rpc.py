"""RPC over real processes: results, exceptions, events, faults, timeouts, close, abort.

Every contract runs on both client faces (the ``face`` fixture: the asyncio ``Client`` and the
``BlockingClient``), each test body once per face.  The tests at the end run on the asyncio face
only, each for a reason it states: they need several calls in flight from one caller or a
cancelled future, which the blocking client (one call at a time, no futures) has no way to
express; its own equivalents (calls from threads, an interrupted call) are in
``test_rpc_events.py`` and ``test_rpc_faults.py``.

Every wait has its own deadline (the face's and the ``timeout=`` arguments); synchronisation
with the worker uses events it sends (a handshake), never sleeps.
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
import rpc_faces
import rpc_funcs
from helpers import run
from rpc_faces import Face

face = rpc_faces.face  # the fixture: each test runs with each face


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


def test_call_result_and_close(face: Face) -> None:
    closes: list[int] = []
    client = face.rpc(anyfork.new(), "rpc_funcs:add", on_close=lambda: closes.append(1))
    assert face.call(client, 1, 2) == 3
    assert face.call(client, "a", "b") == "ab"
    assert face.call(client, 2, b=3) == 5
    face.close(client)
    assert closes == [1]
    assert client.returncode == 0
    assert not client.usable
    with pytest.raises(anyfork.ClosedError):
        face.call(client, 1)
    face.close(client)  # idempotent
    assert closes == [1]


@pytest.mark.parametrize("backend", ["sync", "async"])
def test_worker_stays_lean(face: Face, backend: str) -> None:
    client = face.rpc(anyfork.new(), "rpc_funcs:worker_facts", backend=backend)
    try:
        assert face.call(client)["asyncio"] is (backend == "async")
    finally:
        face.close(client)


def test_new_exec_worker_and_exit_status(face: Face) -> None:
    client = face.rpc(anyfork.new_exec(), "rpc_funcs:exit_now", on_event=Events())
    with pytest.raises(anyfork.WorkerDiedError) as info:
        face.call(client, "os._exit", 5)
    assert info.value.returncode == 5
    face.close(client)


def test_init_gets_args_and_fds(face: Face) -> None:
    r, w = os.pipe()
    try:
        proc = anyfork.new().send_arg("s", b"b").send_fh(r)
        client = face.rpc(proc, "rpc_funcs:init_types", init="rpc_funcs:init_store")
        try:
            assert face.call(client) == ["'s'", "b'b'", "FileIO"]
        finally:
            face.close(client)
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
def test_serializers(face: Face, serializer: str, args: Any, expected: Any) -> None:
    client = face.rpc(anyfork.new(), "rpc_funcs:echo", serializer=serializer)
    try:
        assert face.call(client, args[0], **args[1]) == expected
    finally:
        face.close(client)


@pytest.mark.parametrize(("serializer", "value"), [("bytes", b"abc"), ("str", "abc")])
def test_raw_serializers(face: Face, serializer: str, value: Any) -> None:
    client = face.rpc(anyfork.new(), "rpc_funcs:upper", serializer=serializer)
    try:
        assert face.call(client, value) == value.upper()
        with pytest.raises(anyfork.EncodeError):
            face.call(client, value, value)
        assert face.call(client, value) == value.upper()
    finally:
        face.close(client)


# -- exceptions -----------------------------------------------------------------------------------


def test_exception_fails_only_that_call(face: Face) -> None:
    client = face.rpc(anyfork.new(), "rpc_funcs:boom")
    try:
        with pytest.raises(ValueError, match="bad value") as info:
            face.call(client, "value", "bad value")
        assert isinstance(info.value.__cause__, anyfork.RemoteTraceback)
        assert "in boom" in info.value.__cause__.text
        with pytest.raises(rpc_funcs.CustomError, match="custom"):
            face.call(client, "custom", "custom")
        with pytest.raises(anyfork.RemoteError) as remote:
            face.call(client, "unrebuildable", "m")
        assert remote.value.type_name == "rpc_funcs.Unrebuildable"
        assert "Unrebuildable" in remote.value.remote_traceback
        with pytest.raises(ValueError, match="again"):
            face.call(client, "value", "again")
    finally:
        face.close(client)


def test_unpicklable_argument_fails_in_parent(face: Face) -> None:
    client = face.rpc(anyfork.new(), "rpc_funcs:ident")
    try:
        with pytest.raises(anyfork.EncodeError) as info:
            face.call(client, lambda: None)
        assert info.value.side == "parent"
        assert face.call(client, 7) == 7
    finally:
        face.close(client)


def test_unpicklable_result_fails_in_child(face: Face) -> None:
    client = face.rpc(anyfork.new(), "rpc_funcs:unpicklable_result")
    try:
        with pytest.raises(anyfork.EncodeError, match="cannot encode the result") as info:
            face.call(client)
        assert info.value.side == "child"
        with pytest.raises(anyfork.EncodeError):
            face.call(client)
    finally:
        face.close(client)


def test_large_payload_both_ways(face: Face) -> None:
    big = os.urandom(1024) * (20 * 1024)  # 20 MiB
    client = face.rpc(anyfork.new(), "rpc_funcs:ident")
    try:
        assert face.call(client, big) == big
        assert face.call(client, bytearray(big)) == bytearray(big)
        assert face.call(client, 1) == 1
    finally:
        face.close(client)


# -- start-up failures ----------------------------------------------------------------------------


def test_bad_function_name_at_startup(face: Face) -> None:
    with pytest.raises(AttributeError, match="no_such_function"):
        face.rpc(anyfork.new(), "rpc_funcs:no_such_function")
    with pytest.raises(ModuleNotFoundError):
        face.rpc(anyfork.new(), "no_such_module_xyz:f")


def test_init_failure_at_startup(face: Face) -> None:
    proc = anyfork.new().send_arg("x")
    with pytest.raises(rpc_funcs.CustomError, match="init failed with 1 args") as info:
        face.rpc(proc, "rpc_funcs:add", init="rpc_funcs:init_fail")
    assert isinstance(info.value.__cause__, anyfork.RemoteTraceback)


def test_event_in_init_is_an_error(face: Face) -> None:
    with pytest.raises(RuntimeError, match="only in an RPC worker"):
        face.rpc(anyfork.new(), "rpc_funcs:add", init="rpc_funcs:event_in_init")


def test_startup_death_is_spawn_error(face: Face) -> None:
    proc = anyfork.new().eval("import os\ndef die(*a):\n    os._exit(3)\n")
    with pytest.raises(anyfork.SpawnError, match="exit status 3"):
        face.rpc(proc, "rpc_funcs:add", init="die")


def test_missing_optional_serializer_fails_before_spawning(
    face: Face, monkeypatch: pytest.MonkeyPatch
) -> None:
    # msgpack is installed for the suite: make it unimportable here (None in sys.modules makes
    # ``import msgpack`` raise ImportError), as on a machine without it.
    monkeypatch.setitem(sys.modules, "msgpack", None)
    proc = anyfork.new()
    with pytest.raises(ImportError, match="pip install msgpack"):
        face.rpc(proc, "rpc_funcs:add", serializer="msgpack")
    proc.close()


# -- events and ordering ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sync", "async"])
def test_events_come_before_their_calls_result(face: Face, backend: str) -> None:
    log: list[Any] = []
    client = face.rpc(anyfork.new(), "rpc_funcs:progress", backend=backend, on_event=Events(log))
    try:
        log.extend(("result", face.call(client, i, 3)) for i in range(3))
    finally:
        face.close(client)
    expected = []
    for i in range(3):
        expected += [("event", "progress", i, k) for k in range(3)] + [("result", i)]
    assert log == expected


def test_async_flush_before_exit_delivers_event(face: Face) -> None:
    events = Events()
    client = face.rpc(anyfork.new(), "rpc_funcs:event_flush_exit", backend="async", on_event=events)
    with pytest.raises(anyfork.WorkerDiedError) as info:
        face.call(client, 9)
    assert info.value.returncode == 9
    assert events.items == [("bye",)]
    face.close(client)


def test_sync_flush_is_a_noop(face: Face) -> None:
    client = face.rpc(anyfork.new(), "rpc_funcs:sync_flush")
    try:
        assert face.call(client) is True
    finally:
        face.close(client)


# -- faults ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sync", "async"])
def test_kill_9_mid_call(face: Face, backend: str) -> None:
    """The worker killed while it runs a call (the call's first event says it runs): the call
    fails with ``WorkerDiedError`` saying how, ``on_error`` is told once, ``on_close`` never,
    and a later call fails the same way, unsent."""
    func = "rpc_funcs:block" if backend == "sync" else "rpc_funcs:wait_forever"
    errors: list[BaseException] = []
    closes: list[int] = []
    client = face.rpc(
        anyfork.new(),
        func,
        backend=backend,
        on_error=errors.append,
        on_close=lambda: closes.append(1),
    )

    def kill(*event: Any) -> None:
        assert client.pid is not None
        os.kill(client.pid, signal.SIGKILL)

    with pytest.raises(anyfork.WorkerDiedError) as info:
        face.call(client, "c", on_event=kill)
    exc = info.value
    assert (exc.pid, exc.returncode, exc.signal) == (client.pid, -signal.SIGKILL, signal.SIGKILL)
    assert "died with calls outstanding (killed by SIGKILL)" in str(exc)
    with pytest.raises(anyfork.WorkerDiedError):
        face.call(client, "after")
    face.close(client)
    assert len(errors) == 1
    assert isinstance(errors[0], anyfork.WorkerDiedError)
    assert closes == []


@pytest.mark.parametrize(
    ("how", "code", "returncode"),
    [("os._exit", 3, 3), ("sys.exit", 4, 4), ("segfault", 0, -signal.SIGSEGV)],
)
def test_worker_exits_mid_call(face: Face, how: str, code: int, returncode: int) -> None:
    events = Events()
    client = face.rpc(anyfork.new(), "rpc_funcs:exit_now", on_event=events)
    with pytest.raises(anyfork.WorkerDiedError) as info:
        face.call(client, how, code)
    assert info.value.returncode == returncode
    assert "died with calls outstanding" in str(info.value)
    assert events.items == [("exiting", how)]
    with pytest.raises(anyfork.WorkerDiedError):
        face.call(client, how, code)
    face.close(client)


# -- timeouts, close and abort --------------------------------------------------------------------


def test_a_sync_timeout_kills_the_worker(face: Face) -> None:
    client = face.rpc(anyfork.new(), "rpc_funcs:block", on_event=Events())
    with pytest.raises(TimeoutError):
        face.call(client, "first", timeout=0.2)  # block() never returns
    assert not client.usable
    with pytest.raises(anyfork.WorkerDiedError, match=r"because call 1 timed out after 0\.2 s"):
        face.call(client, "second")  # refused, unsent: the worker has been killed
    face.close(client)
    assert client.returncode == -signal.SIGKILL


def test_an_async_timeout_cancels_the_call_and_the_worker_serves_on(face: Face) -> None:
    events = Events()
    client = face.rpc(anyfork.new(), "rpc_funcs:wait_forever", backend="async", on_event=events)
    try:
        with pytest.raises(TimeoutError):
            face.call(client, "a", timeout=0.2)
        with pytest.raises(TimeoutError):
            face.call(client, "b", timeout=0)
        assert client.usable
        with pytest.raises(TimeoutError):
            face.call(client, "c", timeout=0.2)
        assert client.usable
    finally:
        face.close(client)


def test_abort(face: Face) -> None:
    """``abort()`` closes at once; the worker sees EOF and exits; a later call is refused."""
    client = face.rpc(anyfork.new(), "rpc_funcs:ident")
    assert face.call(client, 1) == 1
    client.abort()
    assert not client.usable
    with pytest.raises(anyfork.ClosedError):
        face.call(client, 2)
    client.abort()  # idempotent


@pytest.mark.parametrize("cls", ["Client", "BlockingClient"])
def test_clients_have_no_public_constructor(cls: str) -> None:
    """``rpc()``/``rpc_blocking()`` make clients; calling the class is refused, before anything
    is looked at."""
    with pytest.raises(TypeError, match=rf"^anyfork\.{cls} has no public constructor$"):
        getattr(anyfork, cls)()


# -- asyncio only: several calls in flight from one caller, cancelled futures ---------------------


def test_pipelined_calls_from_one_task() -> None:
    """asyncio only: ``gather`` over one client (the blocking client takes one call at a time;
    calls from several threads take turns: ``test_rpc_events``)."""

    async def main() -> None:
        async with await _client(rpc_funcs.add) as client:
            results = await asyncio.gather(*(client(i, 1) for i in range(200)))
            assert results == list(range(1, 201))

    run(main())


def test_sync_events_and_results_in_order_when_pipelined() -> None:
    """asyncio only: many calls in flight at once (see above)."""
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
    """asyncio only: concurrent calls in the worker need several in flight (see above)."""
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


@pytest.mark.parametrize("limit", [1, 3])
def test_async_concurrency_limit(limit: int) -> None:
    """asyncio only: more calls in flight than the limit (see above)."""
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


@pytest.mark.parametrize("backend", ["sync", "async"])
def test_kill_9_fails_every_outstanding_call(backend: str) -> None:
    """asyncio only: several calls outstanding (see above; one call: ``test_kill_9_mid_call``)."""
    func = "rpc_funcs:block" if backend == "sync" else "rpc_funcs:wait_forever"

    async def main() -> None:
        events = Events()
        client = await _client(func, backend=backend, on_event=events)
        calls = [asyncio.ensure_future(client(f"c{i}")) for i in range(3)]
        await events.wait(lambda items: len(items) >= 1)  # a call is running in the worker
        assert client.pid is not None
        os.kill(client.pid, signal.SIGKILL)
        results = await asyncio.gather(*calls, return_exceptions=True)
        for exc in results:
            assert isinstance(exc, anyfork.WorkerDiedError)
            assert exc.pid == client.pid
            assert exc.returncode == -signal.SIGKILL
        await client.aclose(timeout=10)

    run(main())


def test_sync_timeout_fails_the_other_outstanding_calls() -> None:
    """asyncio only: a second call outstanding while the first times out (see above)."""

    async def main() -> None:
        client = await _client("rpc_funcs:block", on_event=Events())
        other = asyncio.ensure_future(client("second"))
        with pytest.raises(TimeoutError):
            await client.call("first", timeout=0.2)  # block() never returns
        with pytest.raises(anyfork.WorkerDiedError, match="timed out") as info:
            await asyncio.wait_for(other, 10)
        assert info.value.returncode == -signal.SIGKILL
        await client.aclose(timeout=10)

    run(main())


def test_sync_cancel_kills_worker() -> None:
    """asyncio only: a cancelled future (the blocking client's interrupted call:
    ``test_rpc_events.test_a_failing_handler_in_the_blocking_client_abandons_its_call``)."""

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


def test_async_cancel_cancels_the_child_task() -> None:
    """asyncio only: a cancelled future (see above)."""

    async def main() -> None:
        events = Events()
        client = await _client("rpc_funcs:wait_forever", backend="async", on_event=events)
        async with client:
            call = asyncio.ensure_future(client("a"))
            await events.wait(lambda items: len(items) >= 1)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            # The worker is alive and cancelled it.
            events.items.clear()
            call = asyncio.ensure_future(client("d"))
            await events.wait(lambda items: ("waiting", "d") in items)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call

    run(main())


def test_close_lets_outstanding_calls_finish() -> None:
    """asyncio only: calls still in flight when ``aclose()`` starts (see above)."""
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
    """asyncio only: a call in flight when ``abort()`` is called (see above)."""

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
