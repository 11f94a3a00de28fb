"""``anyfork.Pool``: an auto-scaling, load-balancing pool of RPC workers, for asyncio programs
(the machinery is ``_aio_engine.AsyncEngine``)."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Iterable
from contextlib import aclosing
from itertools import repeat
from typing import Any

from .._core._process import Func
from .._util import publish
from ._aio_engine import AsyncEngine
from ._map import Delivery, Progress, Unit
from ._records import PoolStatistics
from ._worker import START_TIMEOUT, Templates, other_pools_names, rpc_options, settings

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._worker import Backend, Serializer

__all__ = ["Pool"]


class Pool(AsyncEngine):
    """An auto-scaling pool of RPC workers forked from a template, serving one function.

    ::

        async with anyfork.Pool(template, "mymod:work", max=4) as pool:
            result = await pool(1, 2)
            async for r in pool.map(range(100)):
                ...

    Args:
        template: the process workers are forked from (``template.fork()``); prepare it with
            the modules they need (the pool adds the RPC server's own module, so that no
            worker imports anything after its fork).  ``None``: the pool makes its own
            template, forked from the default template, with the function's module imported;
            if it dies it is recreated.  A template you pass is never closed by the pool, and
            if it dies every call the pool cannot serve fails with ``SpawnError``.
            Or several, each with its cap (the most workers forked from it at once):
            ``[(anyfork.new(), 2), (host_a.new(), 4), (host_b.new(), 4)]`` (local and remote
            templates, ``anyfork.remote``: one pool spanning hosts).  A new worker is forked
            from the template with the fewest workers for its cap; one whose start fails gets
            no more workers (a lost host: only the calls its workers ran fail).  ``max``
            defaults to the caps' sum.
        func: the function, as ``"module:qualname"`` or a module-level function object.
        max: most workers at once (default: the CPUs this process may use, or ``idle`` if
            larger; the caps' sum for several templates).
        idle: fewest idle workers, and the initial size; ``0`` lets the pool shrink to zero.
        load: calls sent to one worker at once (1: lowest latency; 2: full throughput with the
            sync backend).
        start: seconds between worker starts (``0``: no pacing); the first worker of an empty
            pool and starts up to ``idle`` workers are never delayed.
        stop: seconds a worker beyond ``idle`` stays idle before it stops, and between two
            such stops (``0``: at once).
        max_calls: a worker is replaced after this many calls.
        max_memory: a worker whose resident memory exceeds this many bytes after a call is
            replaced.
        on_error: called with each worker failure (a worker that died with calls, a start that
            failed); the failed calls raise it too.
        on_close: called once the pool has closed and every worker has exited.
        backend, serializer, init, done, concurrency: passed to each worker's
            :func:`anyfork.rpc`.
        on_event: called as ``on_event(*args)`` for each ``anyfork.worker.event(*args)`` (without a
            handler, events are dropped; a call can have its own, see :meth:`call`).
        timeout: each worker's start-up deadline in seconds (``rpc()``'s ``timeout``).

    Raises:
        ValueError: a bad setting; TypeError: an unknown option (naming anyfork's for one of
        another pool's: ``processes=`` is ``max=``, ``initializer=`` is ``init=``,
        ``maxtasksperchild=`` is ``max_calls=``), or a template that is not a Process.

    Scheduling: each call goes to the least-loaded worker below ``load``; when all are at
    ``load`` calls queue (in order) and workers start up to ``max``; idle workers beyond
    ``idle`` stop.  A worker may call ``anyfork.worker.retire()`` to be replaced: it finishes
    its calls and gets no new ones.  A worker that dies fails only the calls it was running
    (``WorkerDiedError``) and is replaced; queued calls are never lost.  A worker that cannot
    start fails the calls waiting for it with its start-up error (its own type, and an
    ``AnyforkError``: the type ``rpc()`` raises for the same mistake).

    Cancellation of ``await pool(...)``: a queued call is withdrawn; a running one is
    cancelled as the RPC client does (with the sync backend its worker is killed, and that
    worker's other running calls fail with ``WorkerDiedError``; it takes no new call).  A
    worker's death fails its calls with an exception that is ``WorkerDiedError`` and the
    standard library's ``BrokenProcessPool`` both.  Ctrl-C in ``asyncio.run`` cancels the
    main task: leaving ``async with`` that way cancels the pool (workers killed, calls failed).
    """

    @other_pools_names("Pool")
    def __init__(
        self,
        template: Templates,
        func: Func,
        *,
        max: int | None = None,  # the name the original uses
        idle: int = 1,
        load: int = 2,
        start: float = 0.1,
        stop: float = 10.0,
        max_calls: int | None = None,
        max_memory: int | None = None,
        on_error: Callable[[BaseException], object] | None = None,
        on_close: Callable[[], object] | None = None,
        backend: Backend = "sync",
        serializer: str | Serializer = "pickle",
        init: Func | None = None,
        done: Func | None = None,
        on_event: Callable[..., object] | None = None,
        concurrency: int = 64,
        timeout: float | None = START_TIMEOUT,
    ) -> None:
        super().__init__(
            template,
            func,
            settings(template, max, idle, load, start, stop),
            max_calls,
            max_memory,
            on_error,
            on_close,
            rpc_options(backend, serializer, init, done, on_event, concurrency, timeout),
        )

    def __repr__(self) -> str:
        return self._describe("Pool")

    def __call__(self, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        """``await pool(*args, **kwargs)``: call the function in a worker; return its result.

        The call is queued at once, in order (it is sent as soon as a worker is free):
        ``pool(...)`` returns a future, so calls can be made without awaiting each one.

        Raises (when awaited): what the function raised (its own type), ``WorkerDiedError``
        if the worker died while running it, the start-up error if no worker could be started
        for it, ``ClosedError`` once the pool is closing.

        Cancellation: see the class docs."""
        return self._submit(args, kwargs, None)

    def call(
        self,
        *args: Any,
        timeout: float | None = None,
        on_event: Callable[..., object] | None = None,
        **kwargs: Any,
    ) -> asyncio.Future[Any]:
        """Like ``pool(...)``, with a deadline and an event handler of its own.

        Args:
            *args: the function's positional arguments.
            timeout: seconds for the whole call (waiting in the queue included), then
                ``TimeoutError``; a call that times out while running is abandoned as a
                cancelled one is (the sync backend kills its worker).
            on_event: called as ``on_event(*args)`` for each ``anyfork.worker.event(*args)``
                this call raises (the pool's ``on_event`` gets the others), in order, each
                before the call's result is returned.
            **kwargs: the function's keyword arguments (one named ``timeout`` or
                ``on_event`` goes through ``pool(...)``)."""
        return self._submit(args, kwargs, timeout, on_event)

    async def wait_until(
        self, predicate: Callable[[PoolStatistics], bool], *, timeout: float | None = None
    ) -> PoolStatistics:
        """Wait until ``predicate(pool.statistics())`` holds; return those statistics.

        Checked after every change of the pool's state, so it never polls:
        ``await pool.wait_until(lambda s: s.workers == 0, timeout=10)``.

        Raises:
            TimeoutError: after ``timeout`` seconds.

        Cancellation leaves the pool as it was."""
        return await self._wait_until(predicate, timeout)

    async def wait_for(
        self, predicate: Callable[[PoolStatistics], bool], *, timeout: float | None = None
    ) -> PoolStatistics:
        """Deprecated alias of :meth:`wait_until` (``asyncio.wait_for`` is another thing)."""
        warnings.warn("Pool.wait_for() is deprecated: use Pool.wait_until()", DeprecationWarning, 2)
        return await self.wait_until(predicate, timeout=timeout)

    def map(
        self,
        *iterables: Iterable[Any],
        max_in_flight: int | None = None,
        timeout: float | None = None,
        progress: bool | Progress = False,
        chunksize: int | None = None,
    ) -> MapResults:
        """Call the function on each item (``pool.map(xs)``: ``func(x)``; ``pool.map(xs, ys)``:
        ``func(x, y)``, as the builtin ``map`` zips): ``async for`` takes the results one by
        one, in order; ``await`` takes them all, as a list (``multiprocessing.Pool.map``'s
        result, without an ``async for`` step per item: for cheap calls the faster way).

        Items travel in batches (one frame each way, run in order by one worker) sized by the
        pool as workers take them: one item first, then batches of about 0.1 s from the time
        the earlier ones took (for cheap calls, many times faster than a call per item).
        ``chunksize`` fixes the items per call instead, as in ``concurrent.futures``
        (``chunksize=1``: one call per item).  With the ``"bytes"`` and ``"str"`` serialisers
        every item is a call of its own.

        At most ``max_in_flight`` calls (a batch is one) are in flight at once (default: twice
        the pool's capacity, ``2 * max * load``), so a huge or endless iterable is read
        lazily.  The first exception (in item order) is raised when its item's turn comes,
        after the results before it (``await``: raised instead of the list); no call is sent
        after it.  Closing the iterator early withdraws the calls still queued and lets those
        running finish (their results are dropped); after a ``break`` that happens when the
        generator is finalised, so use ``async with contextlib.aclosing(pool.map(...)) as
        results:`` to make it immediate.
        ``timeout`` applies to each call (a batch of ``n`` items: ``n * timeout``).

        ``progress=True`` shows a tqdm bar (without tqdm: a ``RuntimeWarning``, once, and no
        bar); ``progress=callable`` is called as ``callable(done, total)`` as results are
        delivered, ``done`` counting items (``total`` is ``None`` when the iterables have no
        length).

        Raises:
            TypeError: no iterable; ValueError: a bad ``max_in_flight`` or ``chunksize``."""
        return MapResults(self._map(iterables, max_in_flight, timeout, progress, chunksize))

    async def aclose(self, *, cancel: bool = False, timeout: float | None = None) -> None:
        """Close the pool: queued calls still run, then every worker stops; returns once all
        have exited (and the pool's own template), after ``on_close``.  New calls raise
        ``ClosedError``.

        ``cancel=True`` is :meth:`cancel` first: workers are killed, queued calls fail.

        Raises:
            TimeoutError: after ``timeout`` seconds, once the rest is cancelled that way.

        Cancellation: as ``timeout``."""
        await self._aclose(cancel, timeout)

    def cancel(self) -> None:
        """Close the pool the fast way, now: queued calls fail with ``ClosedError``, workers
        are killed (their running calls fail with ``WorkerDiedError``), starting ones
        abandoned.  ``await pool.aclose()`` afterwards waits until they have exited."""
        self._cancel()

    async def __aenter__(self) -> Pool:
        """Open the pool and wait for its initial ``idle`` workers; a worker that cannot start
        (a bad function name, a failing ``init``) raises its error here."""
        await self._open()
        return self

    async def __aexit__(self, t: type[BaseException] | None, *rest: object) -> None:
        """Graceful ``aclose()``; after an exception in the block, ``aclose(cancel=True)``."""
        await self.aclose(cancel=t is not None)


#: Results an ``async for`` over ``Pool.map`` takes between two runs of the event loop.
STRETCH = 4096


class MapResults:
    """What :meth:`Pool.map` returns: an async iterator over the results in order, or an
    awaitable of their list; taken once, one way or the other.  ``aclose()`` stops the map
    early: calls not started are withdrawn, those running finish (their results dropped)."""

    __slots__ = ("_delivery", "_gen", "_taken")

    def __init__(self, delivery: Delivery) -> None:
        self._delivery = delivery
        self._gen: AsyncGenerator[Any, None] | None = None
        self._taken = False

    def _units(self) -> AsyncGenerator[Unit, None]:
        if self._taken:
            raise RuntimeError("a map's results are taken once (async for, or await)")
        self._taken = True
        return _units(self._delivery)

    def __aiter__(self) -> AsyncGenerator[Any, None]:
        # The generator itself: ``async for`` then runs no Python code of ours per step.
        if self._gen is None:
            self._gen = _one_by_one(self._units())
        return self._gen

    def __anext__(self) -> Awaitable[Any]:
        return self.__aiter__().__anext__()

    def __await__(self) -> Generator[Any, None, list[Any]]:
        return _all(self._units()).__await__()

    async def aclose(self) -> None:
        if self._gen is not None:
            await self._gen.aclose()
        elif not self._taken:
            self._taken = True
            self._delivery.close()


async def _units(delivery: Delivery) -> AsyncGenerator[Unit, None]:
    """The calls of a map in order, each once its outcome is in (awaited on the pool's loop,
    which reports outcomes); the map is closed when this generator is."""
    job = delivery.job
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] | None = None

    def on_change() -> None:
        if fut is not None and not fut.done():
            fut.set_result(None)

    job.on_change = on_change
    try:
        while True:
            delivery.pump()
            with job.changed:
                try:
                    unit = delivery.next_unit()
                except StopIteration:
                    return
            if unit is None:
                # Outcomes are reported on this loop: none can come between the look and here.
                fut = loop.create_future()
                await fut
                continue
            delivery.delivered(unit)
            yield unit
    finally:
        job.on_change = None
        delivery.close()


async def _one_by_one(units: AsyncGenerator[Unit, None]) -> AsyncGenerator[Any, None]:
    async with aclosing(units):
        async for unit in units:
            # Each result is let go of as it is given (it is its consumer's alone, as in
            # ``_map.draining``): popped from the end of the reversed list, 20% cheaper per
            # item than ``draining`` here, where every item costs an ``async for`` step anyway.
            results = unit.results
            results.reverse()
            pop = results.pop
            while results:
                for _ in repeat(None, min(STRETCH, len(results))):
                    yield pop()
                if results:
                    # Taking results lets no other task run: the loop runs every STRETCH of
                    # them, so that answers are read as they come (less of the consumer's
                    # time counts as its call's: see _batching.TARGET) and the workers are
                    # given their next calls while the consumer takes these.
                    await asyncio.sleep(0)
            if unit.error is not None:
                raise unit.error


async def _all(units: AsyncGenerator[Unit, None]) -> list[Any]:
    out: list[Any] = []
    async with aclosing(units):
        async for unit in units:
            out += unit.results
            if unit.error is not None:
                raise unit.error
    return out


publish(globals())
