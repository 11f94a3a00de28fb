"""Per-call event handlers over real workers, on both client faces and both backends: an event
goes to the handler given to the call that raised it (``client.call(..., on_event=h)``, and
the pools' ``_submit``/``_call``/batches), other events to the client's ``on_event``, all in the
order the worker produced them.

Every wait has a deadline; synchronisation with the worker uses its events, never sleeps.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import anyfork
import anyfork.worker
import rpc_faces
from rpc_faces import AsyncFace, BlockingFace, Face

face = rpc_faces.face  # the fixture: each test runs with each face


class Log:
    """Every handler appends to one shared list, tagged with its own name."""

    def __init__(self) -> None:
        self.entries: list[tuple[Any, ...]] = []

    def handler(self, name: str) -> Any:
        def on_event(*args: Any) -> None:
            self.entries.append((name, *args))

        return on_event

    def of(self, name: str) -> list[tuple[Any, ...]]:
        return [entry[1:] for entry in self.entries if entry[0] == name]


@pytest.mark.parametrize("backend", ["sync", "async"])
def test_a_calls_events_go_to_its_handler(face: Face, backend: str) -> None:
    log = Log()
    client = face.rpc(
        anyfork.new(), "rpc_funcs:progress", backend=backend, on_event=log.handler("client")
    )
    try:
        assert face.call(client, 1, 3, on_event=log.handler("mine")) == 1
        assert face.call(client, 2, 2) == 2
        assert face.call(client, 3, 1, on_event=log.handler("other")) == 3
        assert log.entries == [
            ("mine", "progress", 1, 0),
            ("mine", "progress", 1, 1),
            ("mine", "progress", 1, 2),
            ("client", "progress", 2, 0),
            ("client", "progress", 2, 1),
            ("other", "progress", 3, 0),
        ]
    finally:
        face.close(client)


def test_no_client_handler_is_needed_for_a_calls_own_events(face: Face) -> None:
    errors: list[BaseException] = []
    log = Log()
    client = face.rpc(anyfork.new(), "rpc_funcs:progress", on_error=errors.append)
    try:
        assert face.call(client, 7, 2, on_event=log.handler("mine")) == 7
        assert log.of("mine") == [("progress", 7, 0), ("progress", 7, 1)]
        assert errors == []
    finally:
        face.close(client)


def test_concurrent_calls_each_get_their_own_events_in_the_workers_order() -> None:
    """Async backend, asyncio face: ten calls interleave in the worker (each yields between its
    events); each handler sees exactly its call's events, each before its call's result, and all
    handlers and results together in the order the worker produced them."""
    face = AsyncFace()
    try:
        order: list[tuple[str, int]] = []
        client = face.rpc(anyfork.new(), "rpc_funcs:aprogress", backend="async")

        def handler(i: int) -> Any:
            def on_event(tag: str, seq: int) -> None:
                order.append((f"event {i}", seq))

            return on_event

        async def one(i: int) -> None:
            got, seq = await client.call(i, 4, on_event=handler(i))
            assert got == i
            order.append((f"result {i}", seq))

        async def main() -> None:
            await asyncio.gather(*(one(i) for i in range(10)))

        face.run(main())
        face.close(client)
    finally:
        face.end()
    assert [seq for _, seq in order] == list(range(1, 51))  # the worker's order
    for i in range(10):
        mine = [what for what, _ in order if what.endswith(f" {i}")]
        assert mine == [f"event {i}"] * 4 + [f"result {i}"]


def test_an_event_from_a_task_the_call_started_is_the_calls(face: Face) -> None:
    log = Log()
    client = face.rpc(
        anyfork.new(), "rpc_funcs:in_subtask", backend="async", on_event=log.handler("client")
    )
    try:
        assert face.call(client, "x", on_event=log.handler("mine")) == "x"
        assert log.entries == [("mine", "sub", "x")]
    finally:
        face.close(client)


def test_an_event_outside_any_call_goes_to_the_client(face: Face) -> None:
    log = Log()
    client = face.rpc(
        anyfork.new(), "rpc_funcs:outside_any_call", backend="async", on_event=log.handler("client")
    )
    try:
        assert face.call(client, "x", on_event=log.handler("mine")) == "x"
        assert log.entries == [("client", "outside", "x")]
    finally:
        face.close(client)


@pytest.mark.parametrize("serializer", ["pickle", "bytes"])
@pytest.mark.parametrize("backend", ["sync", "async"])
def test_retire_is_no_event(face: Face, backend: str, serializer: str) -> None:
    """``worker.retire()`` is a frame of its own: no ``on_event`` ever sees it (neither the
    client's nor the call's); the pools' internal ``_on_retire`` gets it, in order."""
    log = Log()
    client = face.rpc(
        anyfork.new(),
        "rpc_funcs:retire_then",
        backend=backend,
        serializer=serializer,
        on_event=log.handler("client"),
        _on_retire=log.handler("retire"),
    )
    try:
        x = b"x" if serializer == "bytes" else 5
        assert face.call(client, x, on_event=log.handler("mine")) == x
        assert log.entries == [("mine", x), ("retire",)]
    finally:
        face.close(client)


def test_retire_in_a_plain_worker_is_ignored(face: Face) -> None:
    log = Log()
    client = face.rpc(anyfork.new(), "rpc_funcs:retire_then", on_event=log.handler("client"))
    try:
        assert face.call(client, 5) == 5
        assert face.call(client, 6) == 6
        assert log.entries == [("client", 5), ("client", 6)]
    finally:
        face.close(client)


def test_events_of_an_abandoned_call_go_nowhere() -> None:
    """Async backend: what a cancelled call says once cancelled (before its CANCELLED) is for
    nobody: not its handler (its caller gave up on it), not the client's."""
    face = AsyncFace()
    try:
        log = Log()
        seen = asyncio.Event()
        mine = log.handler("mine")

        def on_event(*args: Any) -> None:
            mine(*args)
            seen.set()

        client = face.rpc(
            anyfork.new(),
            "rpc_funcs:report_cancel",
            backend="async",
            on_event=log.handler("client"),
        )

        async def main() -> None:
            fut = client.call("a", on_event=on_event)
            while ("waiting", "a") not in log.of("mine"):
                seen.clear()
                await asyncio.wait_for(seen.wait(), 10)
            fut.cancel()
            # The worker reads the CANCEL before this call, so the cancelled task says its
            # last word before this call answers.
            await client.call("return", on_event=log.handler("next"))

        face.run(main())
        face.close(client)
        assert log.entries == [("mine", "waiting", "a"), ("next", "waiting", "return")]
    finally:
        face.end()


def test_the_pools_entry_points_take_a_handler(face: Face) -> None:
    """``Client._submit`` and ``BlockingClient._call`` (what the pools call) route too."""
    log = Log()
    client = face.rpc(anyfork.new(), "rpc_funcs:progress", on_event=log.handler("client"))
    try:
        if isinstance(face, AsyncFace):

            async def submit() -> Any:
                return await client._submit((4, 2), {}, log.handler("mine"))

            assert face.run(submit()) == 4
        else:
            assert client._call((4, 2), {}, 10, log.handler("mine")) == 4
        assert log.entries == [("mine", "progress", 4, 0), ("mine", "progress", 4, 1)]
    finally:
        face.close(client)


def test_a_failing_handler_in_the_blocking_client_abandons_its_call() -> None:
    """As with the client's ``on_event``: the exception leaves the call, whose worker (sync
    backend) is condemned."""
    face = BlockingFace()

    def on_event(*args: Any) -> None:
        raise LookupError("handler failed")

    client = face.rpc(anyfork.new(), "rpc_funcs:progress")
    with pytest.raises(LookupError, match="handler failed"):
        face.call(client, 1, 2, on_event=on_event)
    with pytest.raises(anyfork.WorkerDiedError, match="call 1 was interrupted"):
        face.call(client, 1, 0)
    face.close(client)


def test_a_failing_handler_in_the_asyncio_client_goes_to_the_loop() -> None:
    face = AsyncFace()
    try:
        failures: list[dict[str, Any]] = []
        face.loop.set_exception_handler(lambda loop, context: failures.append(context))

        def on_event(*args: Any) -> None:
            raise LookupError("handler failed")

        client = face.rpc(anyfork.new(), "rpc_funcs:progress")
        assert face.call(client, 3, 1, on_event=on_event) == 3
        assert [type(f["exception"]) for f in failures] == [LookupError]
        assert client.usable
        face.close(client)
    finally:
        face.end()
