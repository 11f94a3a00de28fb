"""The two faces of an RPC client, driven the same way from plain test code, so that one test
body checks both (the ``face`` fixture, imported into a test module, runs it with each)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

import pytest

import anyfork
from anyfork._rpc._batching import BatchResult

T = TypeVar("T")
DEADLINE = 30.0


class AsyncFace:
    """The asyncio ``Client``, driven from plain test code on a loop of its own."""

    name = "asyncio"

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Awaitable[T]) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coro, DEADLINE))

    def rpc(self, proc: anyfork.Process, func: str, **kw: Any) -> Any:
        kw.setdefault("timeout", 10)
        return self.run(anyfork.rpc(proc, func, **kw))

    def call(
        self,
        client: Any,
        *args: Any,
        timeout: float = 10,
        first: Callable[[], object] = int,
        on_event: Callable[..., object] | None = None,
        **kwargs: Any,
    ) -> Any:
        """``first()``, then the call, in one step of the loop: nothing is read in between."""

        async def call() -> Any:
            first()
            return await client.call(*args, timeout=timeout, on_event=on_event, **kwargs)

        return self.run(call())

    def map(self, client: Any, *iterables: Any, timeout: float = 10, **kw: Any) -> list[Any]:
        return self.run(client.map(*iterables, timeout=timeout, **kw))

    def batch(
        self,
        client: Any,
        columns: Sequence[Sequence[Any]],
        timeout: float = 10,
        on_event: Callable[..., object] | None = None,
    ) -> BatchResult:
        """One batch through the pools' entry point (``_submit_batch``)."""

        async def batch() -> BatchResult:
            result: BatchResult = await client._with_timeout(
                client._submit_batch(columns, on_event), timeout
            )
            return result

        return self.run(batch())

    def close(self, client: Any) -> None:
        self.run(client.aclose(timeout=10))

    def end(self) -> None:
        self.loop.close()


class BlockingFace:
    """The ``BlockingClient``."""

    name = "blocking"

    def rpc(self, proc: anyfork.Process, func: str, **kw: Any) -> Any:
        kw.setdefault("timeout", 10)
        return anyfork.rpc_blocking(proc, func, **kw)

    def call(
        self,
        client: Any,
        *args: Any,
        timeout: float = 10,
        first: Callable[[], object] = int,
        on_event: Callable[..., object] | None = None,
        **kwargs: Any,
    ) -> Any:
        first()
        return client.call(*args, timeout=timeout, on_event=on_event, **kwargs)

    def map(self, client: Any, *iterables: Any, timeout: float = 10, **kw: Any) -> list[Any]:
        result: list[Any] = client.map(*iterables, timeout=timeout, **kw)
        return result

    def batch(
        self,
        client: Any,
        columns: Sequence[Sequence[Any]],
        timeout: float = 10,
        on_event: Callable[..., object] | None = None,
    ) -> BatchResult:
        """One batch through the pools' entry point (``_call_batch``)."""
        result: BatchResult = client._call_batch(columns, timeout, on_event)
        return result

    def close(self, client: Any) -> None:
        client.close(timeout=10)

    def end(self) -> None:
        pass


Face = AsyncFace | BlockingFace


@pytest.fixture(params=[AsyncFace, BlockingFace], ids=["asyncio", "blocking"])
def face(request: pytest.FixtureRequest) -> Iterator[Face]:
    """Each face in turn (import it into a test module to use it there)."""
    made: Face = request.param()
    try:
        yield made
    finally:
        made.end()
