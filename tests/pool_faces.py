"""The three pool faces behind one blocking interface, so that one test body checks a contract on
each (``test_pool_faces.py``, as trio-parallel runs its tests over every worker type).

``Pool`` runs on an event loop in a thread of the test's own ("test-loop"); ``BlockingPool``'s
background calls run in test threads ("test-caller"); ``PoolExecutor`` is itself a
``concurrent.futures`` executor.  Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any, Protocol, TypeVar

import pytest

import anyfork
from anyfork import PoolStatistics
from helpers import DEADLINE, WAIT

T = TypeVar("T")


class Pending:
    """A call made in the background: ``result(timeout)``, and ``cancel()`` where the face can
    abandon a call (``Pool``: cancelling its future)."""

    def __init__(self, fut: cf.Future[Any], cancel: Callable[[], object] | None = None) -> None:
        self.fut = fut
        self._cancel = cancel

    def result(self, timeout: float = WAIT) -> Any:
        return self.fut.result(timeout)

    def done(self) -> bool:
        return self.fut.done()

    def cancel(self) -> None:
        assert self._cancel is not None, "this face cannot abandon a call"
        self._cancel()


class MapIterator(Protocol):
    def __next__(self) -> Any: ...

    def close(self) -> None: ...


class Face:
    """What every face offers the contract tests."""

    name = ""
    #: The error a call made after close raises.
    closed_error: type[Exception] = anyfork.ClosedError

    def open(self, template: anyfork.Process | None, func: Any, **options: Any) -> None:
        raise NotImplementedError

    def call(self, *args: Any, timeout: float | None = None) -> Any:
        raise NotImplementedError

    def start(self, *args: Any, timeout: float | None = None) -> Pending:
        raise NotImplementedError

    def call_with_events(self, *args: Any, on_event: Callable[..., object]) -> Any:
        """A call with an event handler of its own (each face's way)."""
        raise NotImplementedError

    def map(self, items: Iterable[Any]) -> list[Any]:
        raise NotImplementedError

    def map_iter(self, items: Iterable[Any], **options: Any) -> MapIterator:
        """The map's results one at a time (``next``), and ``close()`` to stop early."""
        raise NotImplementedError

    def statistics(self) -> PoolStatistics:
        raise NotImplementedError

    def wait_until(self, predicate: Callable[[PoolStatistics], bool]) -> PoolStatistics:
        raise NotImplementedError

    def worker_pids(self) -> list[int]:
        raise NotImplementedError

    def close(self, *, cancel: bool = False) -> None:
        raise NotImplementedError

    def shutdown(self) -> None:
        """The fixture's teardown: close (the fast way) if the test did not, free the threads."""
        raise NotImplementedError


class PoolFace(Face):
    name = "Pool"

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-loop")
        self.thread.start()
        self.pool: anyfork.Pool | None = None

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(DEADLINE)

    def _pool(self) -> anyfork.Pool:
        assert self.pool is not None
        return self.pool

    def open(self, template: anyfork.Process | None, func: Any, **options: Any) -> None:
        async def make() -> anyfork.Pool:
            pool = anyfork.Pool(template, func, **options)
            self.pool = pool
            await pool.__aenter__()
            return pool

        self._run(make())

    def call(self, *args: Any, timeout: float | None = None) -> Any:
        async def call() -> Any:
            return await self._pool().call(*args, timeout=timeout)

        return self._run(call())

    def start(self, *args: Any, timeout: float | None = None) -> Pending:
        async def make() -> asyncio.Future[Any]:
            return self._pool().call(*args, timeout=timeout)  # queued now, not awaited

        call = self._run(make())

        async def wait() -> Any:
            return await call

        fut = asyncio.run_coroutine_threadsafe(wait(), self.loop)
        return Pending(fut, lambda: self.loop.call_soon_threadsafe(call.cancel))

    def call_with_events(self, *args: Any, on_event: Callable[..., object]) -> Any:
        async def call() -> Any:
            return await self._pool().call(*args, on_event=on_event)

        return self._run(call())

    def map(self, items: Iterable[Any]) -> list[Any]:
        async def collect() -> list[Any]:
            return [r async for r in self._pool().map(items)]

        return self._run(collect())

    def map_iter(self, items: Iterable[Any], **options: Any) -> MapIterator:
        face, results = self, self._pool().map(items, **options)

        class Steps:
            def __iter__(self) -> Steps:
                return self

            def __next__(self) -> Any:
                async def step() -> Any:
                    try:
                        return await results.__anext__()
                    except StopAsyncIteration:
                        return Steps  # the end: StopAsyncIteration cannot cross threads

                value = face._run(step())
                if value is Steps:
                    raise StopIteration
                return value

            def close(self) -> None:
                face._run(results.aclose())

        return Steps()

    def statistics(self) -> PoolStatistics:
        async def stats() -> PoolStatistics:
            return self._pool().statistics()

        return self._run(stats())

    def wait_until(self, predicate: Callable[[PoolStatistics], bool]) -> PoolStatistics:
        return self._run(self._pool().wait_until(predicate, timeout=WAIT))

    def worker_pids(self) -> list[int]:
        async def pids() -> list[int]:
            return self._pool().worker_pids()

        return self._run(pids())

    def close(self, *, cancel: bool = False) -> None:
        self._run(self._pool().aclose(cancel=cancel))

    def shutdown(self) -> None:
        try:
            if self.pool is not None:
                self.close(cancel=True)  # idempotent after a close
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(DEADLINE)
            self.loop.close()


class BlockingPoolFace(Face):
    name = "BlockingPool"

    def __init__(self) -> None:
        self.callers = cf.ThreadPoolExecutor(8, thread_name_prefix="test-caller")
        self.pool: anyfork.BlockingPool | None = None

    def _pool(self) -> anyfork.BlockingPool:
        assert self.pool is not None
        return self.pool

    def open(self, template: anyfork.Process | None, func: Any, **options: Any) -> None:
        self.pool = anyfork.BlockingPool(template, func, **options)

    def call(self, *args: Any, timeout: float | None = None) -> Any:
        return self._pool().call(*args, timeout=timeout)

    def start(self, *args: Any, timeout: float | None = None) -> Pending:
        return Pending(self.callers.submit(self.call, *args, timeout=timeout))

    def call_with_events(self, *args: Any, on_event: Callable[..., object]) -> Any:
        return self._pool().call(*args, on_event=on_event)

    def map(self, items: Iterable[Any]) -> list[Any]:
        return list(self._pool().map(items))

    def map_iter(self, items: Iterable[Any], **options: Any) -> MapIterator:
        return self._pool().map(items, **options)

    def statistics(self) -> PoolStatistics:
        return self._pool().statistics()

    def wait_until(self, predicate: Callable[[PoolStatistics], bool]) -> PoolStatistics:
        return self._pool().wait_until(predicate, timeout=WAIT)

    def worker_pids(self) -> list[int]:
        return self._pool().worker_pids()

    def close(self, *, cancel: bool = False) -> None:
        self._pool().close(cancel=cancel)

    def shutdown(self) -> None:
        try:
            if self.pool is not None:
                self.close(cancel=True)
        finally:
            self.callers.shutdown(wait=True)


class ExecutorFace(Face):
    name = "PoolExecutor"
    closed_error = RuntimeError  # "cannot schedule new futures after shutdown", as the stdlib

    def __init__(self) -> None:
        self.ex: anyfork.PoolExecutor | None = None
        self.func: Any = None

    def _ex(self) -> anyfork.PoolExecutor:
        assert self.ex is not None
        return self.ex

    def open(self, template: anyfork.Process | None, func: Any, **options: Any) -> None:
        self.func = func
        if "max" in options:
            options["max_workers"] = options.pop("max")
        if "max_calls" in options:
            options["max_tasks_per_child"] = options.pop("max_calls")
        self.ex = anyfork.PoolExecutor(template=template, func=func, **options)

    def call(self, *args: Any, timeout: float | None = None) -> Any:
        assert timeout is None, "an executor's calls have no timeout"
        return self._ex().submit(self.func, *args).result(WAIT)

    def start(self, *args: Any, timeout: float | None = None) -> Pending:
        assert timeout is None, "an executor's calls have no timeout"
        return Pending(self._ex().submit(self.func, *args))

    def call_with_events(self, *args: Any, on_event: Callable[..., object]) -> Any:
        return self._ex().submit_with(self.func, *args, on_event=on_event).result(WAIT)

    def map(self, items: Iterable[Any]) -> list[Any]:
        return list(self._ex().map(self.func, items, timeout=WAIT))

    def map_iter(self, items: Iterable[Any], **options: Any) -> MapIterator:
        results = self._ex().map(self.func, items, timeout=WAIT, **options)

        def steps() -> Iterator[Any]:
            yield from results

        return steps()  # type: ignore[return-value]  # a generator has close()

    def statistics(self) -> PoolStatistics:
        return self._ex().statistics()

    def wait_until(self, predicate: Callable[[PoolStatistics], bool]) -> PoolStatistics:
        return self._ex().wait_until(predicate, timeout=WAIT)

    def worker_pids(self) -> list[int]:
        return self._ex().worker_pids()

    def close(self, *, cancel: bool = False) -> None:
        self._ex().shutdown(wait=True, cancel_futures=cancel)

    def shutdown(self) -> None:
        if self.ex is not None:
            # The executor has no way to kill running calls (a test's gated ones): its engine's.
            self.ex._engine.close(cancel=True)


FACES: dict[str, Callable[[], Face]] = {
    "Pool": PoolFace,
    "BlockingPool": BlockingPoolFace,
    "PoolExecutor": ExecutorFace,
}


@pytest.fixture(params=list(FACES))
def face(request: pytest.FixtureRequest) -> Iterator[Face]:
    """Each face of the pools in turn (a test module takes it with ``face = pool_faces.face``)."""
    f = FACES[request.param]()
    try:
        yield f
    finally:
        f.shutdown()
