"""Batched calls over real workers, on both client faces and both backends: ``client.map``
batches (results in order, the exception at its item's position, nothing run after it in its
batch), the pools' entry point (``_submit_batch`` / ``_call_batch``) and what can go wrong in
a batch.

Every wait has a deadline; synchronisation with the worker uses its events, never sleeps.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest

import anyfork
import rpc_faces
import rpc_funcs
from anyfork._rpc._batching import BatchResult
from rpc_faces import AsyncFace, Face

face = rpc_faces.face  # the fixture: each test runs with each face


@pytest.fixture(params=["sync", "async"])
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


class Log:
    """Collects events: ``log.events`` in the order they were delivered."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any) -> None:
        self.events.append(args)

    def ran(self) -> list[Any]:
        return [args[1] for args in self.events if args[0] == "ran"]


def _client(face: Face, backend: str, func: str = "rpc_funcs:item", **kw: Any) -> tuple[Any, Log]:
    log = Log()
    return face.rpc(anyfork.new(), func, backend=backend, on_event=log, **kw), log


# -- map ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunksize", [None, 1, 7, 5000])
def test_map_results_in_order(face: Face, backend: str, chunksize: int | None) -> None:
    client, log = _client(face, backend)
    try:
        items = list(range(3000))
        assert face.map(client, items, chunksize=chunksize) == [2 * x for x in items]
        ran = log.ran()
        # Events and results in the worker's order; the sync backend runs everything in order
        # (the async backend runs batches as concurrent tasks).
        assert ran == items if backend == "sync" else sorted(ran) == items
        assert face.map(client, []) == []
    finally:
        face.close(client)


def test_map_over_several_iterables_stops_at_the_shortest(face: Face) -> None:
    client = face.rpc(anyfork.new(), "rpc_funcs:pair")
    try:
        assert face.map(client, range(5), "abc") == [(0, "a"), (1, "b"), (2, "c")]
        assert face.map(client, range(500), "x" * 500, chunksize=100)[-1] == (499, "x")
    finally:
        face.close(client)


@pytest.mark.parametrize("chunksize", [10, 3, None])
def test_map_raises_at_the_failing_item(face: Face, backend: str, chunksize: int | None) -> None:
    client, log = _client(face, backend)
    try:
        items = [0, 1, 2, 3, 4, -5, 6, 7, -8, 9]
        with pytest.raises(ValueError, match="negative item") as info:
            face.map(client, items, chunksize=chunksize)
        assert str(info.value) == "negative item -5"  # the first failure, in item order
        assert isinstance(info.value.__cause__, anyfork.RemoteTraceback)
        assert not isinstance(info.value, anyfork.AnyforkError)  # the function's own
        ran = log.ran()
        assert set(range(5)) <= set(ran)
        if chunksize == 10:
            assert ran == items[:6]  # one batch: nothing after the failed item ran
        assert client.usable
        assert face.map(client, [1, 2]) == [2, 4]
    finally:
        face.close(client)


def test_map_with_an_argument_that_cannot_be_encoded(face: Face) -> None:
    client, log = _client(face, "sync")
    try:
        with pytest.raises(anyfork.EncodeError) as info:
            face.map(client, [1, 2, lambda: None, 4], chunksize=2)
        assert info.value.side == "parent"
        assert log.ran() == [1, 2]  # the batch before it; its own was not sent
        assert face.map(client, [3]) == [6]
    finally:
        face.close(client)


# -- one batch (the pools' entry point) -----------------------------------------------------------


def test_a_batch_answers_all_its_results(face: Face, backend: str) -> None:
    client, log = _client(face, backend)
    try:
        result = face.batch(client, [[1, 2, 3]])
        assert isinstance(result, BatchResult)
        assert (result.results, result.error, result.failed_at) == ([2, 4, 6], None, None)
        assert log.ran() == [1, 2, 3]
        assert face.batch(client, [[]]).results == []
    finally:
        face.close(client)


def test_a_batch_stops_at_the_item_that_raises(face: Face, backend: str) -> None:
    client, log = _client(face, backend)
    try:
        result = face.batch(client, [[1, 2, -3, 4, 5]])
        assert result.results == [2, 4]
        assert result.failed_at == 2
        assert isinstance(result.error, ValueError)
        assert str(result.error) == "negative item -3"
        assert isinstance(result.error.__cause__, anyfork.RemoteTraceback)
        assert log.ran() == [1, 2, -3]  # the items after it were not run
        assert face.batch(client, [[7]]).results == [14]
    finally:
        face.close(client)


def test_a_result_that_cannot_be_encoded_fails_its_item(face: Face, backend: str) -> None:
    client, log = _client(face, backend)
    try:
        result = face.batch(client, [[1, "lambda", 3]])
        assert result.results == [2]
        assert isinstance(result.error, anyfork.EncodeError)
        assert result.error.side == "child"
        assert "cannot encode the result (function)" in str(result.error)
        assert log.ran() == [1, "lambda", 3]  # every item ran; item 1's result is lost
    finally:
        face.close(client)


def test_stop_iteration_in_a_batch_is_a_runtime_error(face: Face, backend: str) -> None:
    client, _ = _client(face, backend)
    try:
        result = face.batch(client, [[1, "stop", 3]])
        assert result.results == [2]
        assert isinstance(result.error, RuntimeError)
        assert "raised StopIteration" in str(result.error)
    finally:
        face.close(client)


def test_arguments_the_worker_cannot_load_fail_the_batch(face: Face, backend: str) -> None:
    client, log = _client(face, backend)
    try:
        with pytest.raises(anyfork.DecodeError, match="cannot decode the batch's arguments") as e:
            face.batch(client, [[1, rpc_funcs.LoadsNowhere()]])
        assert e.value.side == "child"
        assert log.ran() == []
        assert face.batch(client, [[1]]).results == [2]
    finally:
        face.close(client)


def test_columns_not_all_as_long(face: Face) -> None:
    client, _ = _client(face, "sync")
    try:
        with pytest.raises(ValueError, match="all as long"):
            face.batch(client, [[1, 2], [3]])
        with pytest.raises(ValueError, match="at least one column"):
            face.batch(client, [])
    finally:
        face.close(client)


def test_a_coroutine_function_is_awaited_and_a_batch_is_one_task(face: Face) -> None:
    """With ``concurrency=1`` the second batch waits for the first, though its items yield to
    the loop: a batch is one task, its items run in order."""
    client, log = _client(face, "async", "rpc_funcs:aitem", concurrency=1)
    try:
        if isinstance(face, AsyncFace):

            async def both() -> list[BatchResult]:
                return list(
                    await asyncio.gather(
                        client._submit_batch([[1, 2, 3]]), client._submit_batch([[4, 5, 6]])
                    )
                )

            first, second = face.run(both())
        else:
            first, second = face.batch(client, [[1, 2, 3]]), face.batch(client, [[4, 5, 6]])
        assert (first.results, second.results) == ([2, 4, 6], [8, 10, 12])
        assert log.ran() == [1, 2, 3, 4, 5, 6]
        assert face.map(client, range(100)) == [2 * x for x in range(100)]
    finally:
        face.close(client)


def test_a_batch_that_a_worker_dies_in(face: Face) -> None:
    client = face.rpc(anyfork.new(), "rpc_funcs:exit_now", on_event=Log())
    with pytest.raises(anyfork.WorkerDiedError) as info:
        face.batch(client, [["os._exit"], [3]])
    assert info.value.returncode == 3
    assert not client.usable
    face.close(client)


def test_a_batch_timeout_kills_a_sync_worker(face: Face) -> None:
    client = face.rpc(anyfork.new(), "rpc_funcs:block", on_event=Log())
    with pytest.raises(TimeoutError):
        face.batch(client, [["a", "b"]], timeout=0.2)
    assert not client.usable
    with pytest.raises(anyfork.WorkerDiedError, match=r"because call 1 timed out after 0\.2 s"):
        face.call(client, "c")
    face.close(client)
    assert client.returncode == -signal.SIGKILL


def test_a_cancelled_batch_is_cancelled_in_an_async_worker() -> None:
    face = AsyncFace()
    try:
        log = Log()
        own = Log()
        seen = asyncio.Event()

        def on_event(*args: Any) -> None:
            own(*args)
            seen.set()

        client = face.rpc(anyfork.new(), "rpc_funcs:report_cancel", backend="async", on_event=log)

        async def main() -> BatchResult:
            fut = client._submit_batch([["a", "b"]], on_event)
            while ("waiting", "a") not in own.events:
                seen.clear()
                await asyncio.wait_for(seen.wait(), 10)
            fut.cancel()
            with pytest.raises(asyncio.CancelledError):
                await fut
            # The worker cancelled the batch's task and serves on.
            result: BatchResult = await client._submit_batch([["return"]], on_event)
            return result

        assert face.run(main()).results == [None]
        # What the cancelled batch said once cancelled went to nobody (see test_rpc_events).
        assert own.events == [("waiting", "a"), ("waiting", "return")]
        assert log.events == []
        assert client.usable
        face.close(client)  # would time out if the first batch still waited in the worker
        assert client.returncode == 0
    finally:
        face.end()


# -- serialisers that cannot batch ----------------------------------------------------------------


@pytest.mark.parametrize(("serializer", "value"), [("bytes", b"ab"), ("str", "ab")])
def test_a_serializer_that_cannot_batch(face: Face, serializer: str, value: Any) -> None:
    client = face.rpc(anyfork.new(), "rpc_funcs:upper", serializer=serializer)
    try:
        assert not client.batchable
        with pytest.raises(anyfork.EncodeError, match="cannot carry a batch of calls") as info:
            face.batch(client, [[value, value]])
        assert info.value.side == "parent"
        # map sends one call per item, unless told to batch.
        assert face.map(client, [value] * 10) == [value.upper()] * 10
        with pytest.raises(anyfork.EncodeError, match="cannot carry a batch of calls"):
            face.map(client, [value] * 10, chunksize=2)
        assert face.call(client, value) == value.upper()
    finally:
        face.close(client)


def test_a_serializer_that_can_batch_says_so(face: Face) -> None:
    client = face.rpc(anyfork.new(), "rpc_funcs:item", serializer="json", on_event=Log())
    try:
        assert client.batchable
        assert face.batch(client, [[1, 2]]).results == [2, 4]
        assert face.map(client, range(50), chunksize=7) == [2 * x for x in range(50)]
    finally:
        face.close(client)


def test_a_killed_worker_fails_the_map(face: Face) -> None:
    """Every frame in flight fails with the worker's death; the map raises it."""
    log = Log()
    pids: list[int] = []

    def kill_when_running(*args: Any) -> None:
        log(*args)
        os.kill(pids[0], signal.SIGKILL)

    client = face.rpc(anyfork.new(), "rpc_funcs:block", on_event=kill_when_running)
    pid = client.pid
    pids.append(pid)
    with pytest.raises(anyfork.WorkerDiedError) as info:
        face.map(client, ["a", "b", "c"], chunksize=2)
    assert info.value.returncode == -signal.SIGKILL
    assert log.events == [("blocked", "a", pid)]
    face.close(client)


def test_an_async_worker_gets_as_many_calls_as_it_runs_at_once(face: Face) -> None:
    """``map`` keeps every one of the async backend's ``concurrency`` slots busy: slow calls
    (here: held until all ten have started) run side by side."""
    r, w = os.pipe()
    try:
        started: list[int] = []

        def on_event(tag: str, i: int) -> None:
            started.append(i)
            if len(started) == 10:
                os.write(w, b"x" * 10)  # release them all

        client = face.rpc(
            anyfork.new().send_fh(r),
            "rpc_funcs:hold",
            backend="async",
            init="rpc_funcs:init_gate",
            concurrency=10,
            on_event=on_event,
        )
        try:
            assert face.map(client, range(10)) == list(range(10))
            assert face.call(client, -1) == 10  # the most that ran at once
        finally:
            face.close(client)
    finally:
        os.close(r)
        os.close(w)
