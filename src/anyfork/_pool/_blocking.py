"""The pool without an event loop: ``BlockingPool`` and the ``concurrent.futures`` face.

``BlockingPool`` runs an ordinary :class:`anyfork.Pool` on a private event loop in one
background thread::

    caller threads ──run_coroutine_threadsafe──> [anyfork-pool thread: event loop, Pool]
                   <──concurrent.futures.Future──            │
                                                             └── RPC sockets to the workers

``PoolExecutor`` does not: its callers are threads already, and a loop thread in between
costs two thread handoffs per call.  It drives the same policy with a thread per worker
(``_pool_threads.ThreadedPool``).  Either way the threads exist only while the pool is open,
and nothing is ever forked from this process (workers are forked by the template), so they
make no fork unsafe.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
from collections.abc import Callable, Coroutine, Generator, Iterable
from typing import Any, TypeVar

from .._core._process import Func, Process, func_ref
from .._util import publish
from ._aio import Pool
from ._records import PoolStatistics
from ._threads import ThreadedPool

__all__ = ["BlockingPool", "PoolExecutor"]

T = TypeVar("T")

#: The function a PoolExecutor without a fixed function serves (calls ``fn(*args, **kw)``).
_APPLY = "anyfork.worker:_apply"


class _LoopThread:
    """An event loop running in a daemon thread until ``stop()``."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            # Whatever is left (callers that gave up) is cancelled, so nothing outlives the loop.
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            asyncio.set_event_loop(None)
            loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> cf.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for it; an interrupted wait cancels it."""
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("a blocking pool call from inside the pool's own thread")
        fut = self.submit(coro)
        try:
            return fut.result(timeout)
        except BaseException:
            fut.cancel()
            raise

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join()


async def _open(template: Process | None, func: Func, options: dict[str, Any]) -> Pool:
    pool = Pool(template, func, **options)
    await pool.__aenter__()
    return pool


class BlockingPool:
    """The blocking twin of :class:`anyfork.Pool`, for programs without an event loop.

    ::

        with anyfork.BlockingPool(template, "mymod:work", max=4) as pool:
            print(pool(1, 2))
            for result in pool.map(range(100)):
                ...

    Same arguments and behaviour as ``Pool``; the constructor opens the pool (and raises a
    worker's start-up error, as ``async with Pool`` does).  Thread-safe: any thread may call.
    The pool runs on a private event loop in one background thread, which ``close()`` joins.

    Interrupting a call (``KeyboardInterrupt``) cancels it as cancelling ``await pool(...)``
    would: a queued call is withdrawn, a running one cancelled (the sync backend kills its
    worker).
    """

    def __init__(self, template: Process | None, func: Func, **options: Any) -> None:
        self._thread: _LoopThread | None = _LoopThread("anyfork-pool")
        try:
            self._pool = self._thread.run(_open(template, func, options))
        except BaseException:
            self._thread.stop()
            self._thread = None
            raise

    def __repr__(self) -> str:
        return f"<anyfork.BlockingPool {'open' if self._thread else 'closed'}>"

    def _loop_thread(self) -> _LoopThread:
        thread = self._thread
        if thread is None:
            from .._errors import ClosedError

            raise ClosedError("the pool is closed")
        return thread

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function in a worker and return its result (see ``Pool.__call__``)."""
        return self._loop_thread().run(self._pool._call(args, kwargs, None))

    def call(self, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Like ``pool(...)`` with a ``timeout`` in seconds (see ``Pool.call``)."""
        return self._loop_thread().run(self._pool._call(args, kwargs, timeout))

    def map(
        self,
        *iterables: Iterable[Any],
        max_in_flight: int | None = None,
        timeout: float | None = None,
        progress: bool | Callable[[int, int | None], object] = False,
    ) -> Generator[Any, None, None]:
        """Yield the results of ``func(*items)`` in order, with at most ``max_in_flight``
        calls in flight (see ``Pool.map``; the iterables are read in the pool's thread)."""
        thread = self._loop_thread()
        agen = self._pool.map(
            *iterables, max_in_flight=max_in_flight, timeout=timeout, progress=progress
        )

        async def step() -> Any:
            return await agen.__anext__()

        async def stop() -> None:
            await agen.aclose()

        try:
            while True:
                try:
                    yield thread.run(step())
                except StopAsyncIteration:
                    return
        finally:
            if thread.thread.is_alive():
                thread.run(stop())

    def statistics(self) -> PoolStatistics:
        """A snapshot of the pool (see :class:`anyfork.PoolStatistics`)."""

        async def stats() -> PoolStatistics:
            return self._pool.statistics()

        return self._loop_thread().run(stats())

    def wait_for(
        self, predicate: Callable[[PoolStatistics], bool], *, timeout: float | None = None
    ) -> PoolStatistics:
        """Block until ``predicate(statistics)`` holds (see ``Pool.wait_for``)."""
        return self._loop_thread().run(self._pool.wait_for(predicate, timeout=timeout))

    def worker_pids(self) -> list[int]:
        """The pids of the pool's ready workers."""

        async def pids() -> list[int]:
            return self._pool.worker_pids()

        return self._loop_thread().run(pids())

    def close(self, *, cancel: bool = False, timeout: float | None = None) -> None:
        """Close the pool (see ``Pool.aclose``) and join its thread.  Idempotent."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        try:
            thread.run(self._pool.aclose(cancel=cancel, timeout=timeout))
        finally:
            thread.stop()

    def cancel(self) -> None:
        """Close the fast way: kill the workers, fail queued calls (see ``Pool.cancel``)."""
        self.close(cancel=True)

    def __enter__(self) -> BlockingPool:
        return self

    def __exit__(self, t: type[BaseException] | None, *rest: object) -> None:
        self.close(cancel=t is not None)


class PoolExecutor(cf.Executor):
    """A :class:`concurrent.futures.Executor` backed by an :class:`anyfork.Pool`.

    ::

        with anyfork.PoolExecutor(template, "mymod:work", max=4) as ex:
            fut = ex.submit(mymod.work, 1, 2)            # or ex.submit("mymod:work", 1, 2)
            results = list(ex.map(mymod.work, range(100)))
        await loop.run_in_executor(ex, mymod.work, 1, 2)  # from asyncio code, too

    A pool serves one function.  With ``func`` given, ``submit(fn, *args)`` takes that
    function (the object or its ``"module:qualname"``) and anything else raises
    ``ValueError``: the executor interface is kept so that code written for it (and
    ``run_in_executor``) works unchanged.  With ``func=None`` the workers run whatever function
    is submitted: it travels with its arguments through the serialiser (by reference with
    pickle, so module-level functions; lambdas too with ``serializer="cloudpickle"``).

    Other arguments as for ``Pool`` (``max_workers`` is an alias of ``max``), with the same
    scheduling policy; each worker is served by a thread of the executor's own, so a call goes
    from the calling thread to that worker's thread and back, with no event loop in between,
    and a caller that waits in ``result()`` (without a timeout) runs its call on the worker's
    connection itself, which saves the handoff both ways.
    Workers start at the first ``submit``; ``shutdown(wait=True)`` runs the queued calls, stops
    the workers and joins the threads.  ``future.cancel()`` succeeds until the call starts
    (queued, or handed to a busy worker).  Worker death fails only that call's future
    (``WorkerDiedError``); the executor stays usable, unlike ``ProcessPoolExecutor``.
    """

    def __init__(
        self,
        template: Process | None = None,
        func: Func | None = None,
        *,
        max_workers: int | None = None,
        **options: Any,
    ) -> None:
        if max_workers is not None:
            options["max"] = max_workers
        self._func = func_ref(func) if func is not None else None
        # The pool's policy driven by threads (no event loop in between: see _pool_threads);
        # built now so that bad settings raise here; workers start with the first submit().
        self._pool = ThreadedPool(template, self._func or _APPLY, **options)

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        """Schedule ``fn(*args, **kwargs)`` (``fn`` must be the pool's function when it has
        one); return its :class:`concurrent.futures.Future`."""
        if self._func is None:
            return self._pool.submit((fn, args, kwargs), {})
        ref = func_ref(fn)
        if ref != self._func:
            raise ValueError(
                f"this executor's pool serves {self._func}; submit() takes that function "
                f"(or its 'module:qualname'), not {ref} (use func=None to submit any)"
            )
        return self._pool.submit(args, kwargs)

    def statistics(self) -> PoolStatistics:
        """A snapshot of the executor's pool (see :class:`anyfork.PoolStatistics`)."""
        return self._pool.statistics()

    def worker_pids(self) -> list[int]:
        """The pids of the executor's ready workers, oldest first."""
        return self._pool.worker_pids()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls; ``cancel_futures=True`` cancels those not started yet.  ``wait=True``
        returns once every call has finished, the workers have exited and the pool's threads
        are joined; ``wait=False`` returns at once and all that happens afterwards."""
        if cancel_futures:
            self._pool.cancel_pending()
        self._pool.close(wait=wait)


publish(globals())
