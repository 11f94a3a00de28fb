"""The pool without an event loop: ``BlockingPool`` and the ``concurrent.futures`` face, both
over the threads engine (``_threads.ThreadsEngine``).  Its threads make no fork unsafe: they
exist only while the pool is open, and workers are forked by the template, never from here."""

from __future__ import annotations

import concurrent.futures as cf
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from .._child._serializers import Same
from .._core._process import Func, Process, func_ref
from .._errors import ClosedError
from .._rpc._batching import columns_of
from .._util import publish
from . import _watch
from ._map import Delivery, Progress, Results, bmap
from ._policy import positive
from ._records import PoolStatistics
from ._threads import ThreadsEngine
from ._worker import START_TIMEOUT, Templates, other_pools_names, rpc_options, settings

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._worker import Backend, Serializer

__all__ = ["BlockingPool", "PoolExecutor"]

#: The function a PoolExecutor without a fixed function serves (calls ``fn(*args, **kw)``).
_APPLY = "anyfork._child._target:apply"


class _Face:
    """What both faces read from their engine."""

    _engine: ThreadsEngine

    def statistics(self) -> PoolStatistics:
        """A snapshot of the pool's workers, queue and totals (see
        :class:`anyfork.PoolStatistics`)."""
        return self._engine.statistics()

    def worker_pids(self) -> list[int]:
        """The pids of the pool's ready workers, oldest first."""
        return self._engine.worker_pids()

    def wait_until(
        self, predicate: Callable[[PoolStatistics], bool], *, timeout: float | None = None
    ) -> PoolStatistics:
        """Block until ``predicate(pool.statistics())`` holds; return those statistics
        (checked after every change of the pool's state, never polled: see
        ``Pool.wait_until``).

        Raises:
            TimeoutError: after ``timeout`` seconds."""
        return self._engine.wait_until(predicate, timeout)


class BlockingPool(_Face):
    """The blocking twin of :class:`anyfork.Pool`, for programs without an event loop.

    ::

        with anyfork.BlockingPool(template, "mymod:work", max=4) as pool:
            print(pool(1, 2))
            for result in pool.map(range(100)):
                ...

    Same arguments and scheduling as ``Pool``; the constructor opens the pool (and raises a
    worker's start-up error, as ``async with Pool`` does).  Thread-safe: any thread may call.
    Each worker is served by a thread of the pool's own, and a caller runs its call on the
    worker's connection itself when the worker is free (no thread handoff); ``close()`` joins
    the threads.  A pool never closed is closed at exit, its queued calls still served.

    Raises:
        The start-up error of the initial workers (its own type, and an ``AnyforkError``);
        ``ValueError``/``TypeError`` for bad arguments.

    Interrupted (``KeyboardInterrupt``) while it waits in a call, a ``map`` or ``close``: the
    pool's calls not started are cancelled, its busy workers killed (their calls fail with
    ``WorkerDiedError``), so nothing outlives the program; the pool stays open (``close``
    closes it the fast way).  Leaving the ``with`` block by an exception cancels the pool.
    """

    @other_pools_names("BlockingPool")
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
        self._engine = ThreadsEngine(
            template,
            func,
            settings(template, max, idle, load, start, stop),
            max_calls,
            max_memory,
            on_error,
            on_close,
            rpc_options(backend, serializer, init, done, on_event, concurrency, timeout),
        )
        self._engine.open(wait=True)

    def __repr__(self) -> str:
        return self._engine._describe("BlockingPool")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function in a worker and return its result (see ``Pool.__call__``)."""
        return self._engine.call(args, kwargs, None)

    def call(
        self,
        *args: Any,
        timeout: float | None = None,
        on_event: Callable[..., object] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Like ``pool(...)`` with a ``timeout`` in seconds and an event handler of its own
        (see ``Pool.call``; the handler runs in the thread that reads the event).

        Raises:
            TimeoutError: the call took longer (queued or running); a running call is
            abandoned (the sync backend kills its worker, which leaves the pool at once)."""
        return self._engine.call(args, kwargs, timeout, on_event)

    def map(
        self,
        *iterables: Iterable[Any],
        max_in_flight: int | None = None,
        timeout: float | None = None,
        progress: bool | Progress = False,
        chunksize: int | None = None,
    ) -> Results:
        """An iterator over the results of ``func(*items)`` in order, items sent in batches
        sized by the pool (or ``chunksize`` items per call), at most ``max_in_flight`` calls in
        flight (see ``Pool.map``).  Stopping early (``close()``, or dropping the iterator)
        withdraws the calls still queued and lets those running finish.

        Raises:
            TypeError: no iterable; ValueError: a bad ``max_in_flight`` or ``chunksize``."""
        engine = self._engine
        delivery = engine._map(iterables, max_in_flight, timeout, progress, chunksize)
        return Results.of(bmap(delivery, interrupted=engine.interrupt))

    def wait_for(
        self, predicate: Callable[[PoolStatistics], bool], *, timeout: float | None = None
    ) -> PoolStatistics:
        """Deprecated alias of :meth:`wait_until`."""
        warnings.warn(
            "BlockingPool.wait_for() is deprecated: use BlockingPool.wait_until()",
            DeprecationWarning,
            2,
        )
        return self.wait_until(predicate, timeout=timeout)

    def close(self, *, cancel: bool = False, timeout: float | None = None) -> None:
        """Close the pool (see ``Pool.aclose``) and join its threads.  Idempotent.

        Raises:
            TimeoutError: after ``timeout`` seconds, once the rest is cancelled."""
        self._engine.close(cancel=cancel, timeout=timeout)

    def cancel(self) -> None:
        """Close the fast way: kill the workers, fail queued calls (see ``Pool.cancel``)."""
        self.close(cancel=True)

    def __enter__(self) -> BlockingPool:
        return self

    def __exit__(self, t: type[BaseException] | None, *rest: object) -> None:
        """Graceful ``close()``; after an exception in the block, ``close(cancel=True)``."""
        self.close(cancel=t is not None)


class PoolExecutor(_Face, cf.Executor):
    """A drop-in :class:`concurrent.futures.ProcessPoolExecutor` over a pool of RPC workers.

    ::

        with anyfork.PoolExecutor(4) as ex:                    # as ProcessPoolExecutor(4)
            fut = ex.submit(mymod.work, 1, 2)
            results = list(ex.map(mymod.work, range(100_000)))  # batched by the pool
        await loop.run_in_executor(ex, mymod.work, 1, 2)       # from asyncio code, too

    Args:
        max_workers: most workers at once (default: the CPUs this process may use).  Workers
            start as calls queue, up to this many at once (no pacing between starts).
        mp_context: accepted for compatibility and ignored: workers are always forked from
            anyfork's template (``template``), whatever the start method.
        initializer: called as ``initializer(*initargs)`` in each worker as it starts
            (pickled, so a module-level function; with ``serializer="cloudpickle"`` any).
            If it raises, the futures waiting for a worker fail with its exception (its own
            type, an ``AnyforkError`` and a ``BrokenProcessPool``).
        initargs: its arguments.
        max_tasks_per_child: a worker is replaced after this many calls (a batch of ``map``
            counts as one, as a chunk does in the standard library).
        template: the process workers are forked from, or several with their caps (see
            :class:`anyfork.Pool`; default: the pool's own, forked from the default template).
        func: the one function the pool serves (``"module:qualname"`` or the function);
            ``submit`` then takes only that function, sent by name.  Default ``None``: any
            function, travelling with its arguments through the serialiser (by reference
            with pickle, so module-level functions; lambdas too with ``"cloudpickle"``).
        idle, load, start, stop, max_memory, on_error, on_close: as for :class:`anyfork.Pool`,
            with the defaults of an executor: ``idle=0`` (no spare worker is kept; a worker
            idle for ``stop`` seconds stops), ``load=1``, ``start=0``.
        backend, serializer, init, done, on_event, concurrency, timeout: as for
            :class:`anyfork.Pool` (each worker's :func:`anyfork.rpc`).

    Raises:
        ValueError: ``max_workers`` below 1 (``"max_workers must be greater than 0"``), or a
        bad setting; TypeError: an unknown option (naming anyfork's name for it, for a known
        one of another pool's), an initializer that is not callable or cannot be pickled.

    Unlike ``ProcessPoolExecutor``, a worker that dies fails only the calls it was running,
    with an exception that is both ``anyfork.WorkerDiedError`` and ``BrokenProcessPool``;
    the executor replaces the worker and keeps serving.  The function's own exceptions keep
    their type, with the worker's traceback as ``__cause__`` (its text also as ``.tb``, as the
    standard library's).  ``multiprocessing.Manager()`` proxies passed as arguments work (the
    workers get the parent's authkey once a Manager can exist).  The futures are plain
    ``concurrent.futures.Future`` objects; the executor keeps no reference to a call's
    function, arguments or result once the call is over.  Each worker is served by a thread of the
    executor's own, and a caller waiting in ``result()`` (without a timeout) runs its call on
    the worker's connection itself.  An executor never shut down is shut down at exit, the
    graceful way (the fast way if the program ends with an uncaught ``KeyboardInterrupt``); a
    ``submit`` after that raises ``RuntimeError``.

    Ctrl-C (``KeyboardInterrupt``) while a caller waits in ``result()``, ``map``,
    ``shutdown`` or at the end of a ``with`` block: the calls not started are cancelled and
    the busy workers killed (their calls fail), so no process outlives the program.
    """

    @other_pools_names("PoolExecutor")
    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,  # Any: a multiprocessing context, ignored
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_child: int | None = None,
        *,
        template: Templates = None,
        func: Func | None = None,
        # As the standard library's: a worker per call until max_workers, at once, and no
        # spare kept idle.
        idle: int = 0,
        load: int = 1,
        start: float = 0.0,
        stop: float = 10.0,
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
        if isinstance(max_workers, (Process, str)) or callable(max_workers):
            raise TypeError(
                f"PoolExecutor's first argument is max_workers, as ProcessPoolExecutor's, not "
                f"{max_workers!r}: give the template and function as template= and func="
            )
        if max_workers is not None and not positive(max_workers):
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int) or isinstance(max_tasks_per_child, bool):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child < 1:
                raise ValueError("max_tasks_per_child must be >= 1")
        self._func = func_ref(func) if func is not None else None
        # Built now so that bad settings raise here; workers start with the first submit().
        pool = settings(template, max_workers, idle, load, start, stop)
        self._engine = ThreadsEngine(
            template,
            self._func or _APPLY,
            pool,
            max_tasks_per_child,
            max_memory,
            on_error,
            on_close,
            rpc_options(backend, serializer, init, done, on_event, concurrency, timeout),
            face="PoolExecutor",
            setup=None if initializer is None else (initializer, tuple(initargs)),
        )
        # The size code written for the standard library's executors reads (Dask does).
        self._max_workers = pool.max

    def __repr__(self) -> str:
        return self._engine._describe("PoolExecutor")

    def _check(self, fn: Any) -> None:
        """``ValueError`` for another function than the pool's (when it serves one)."""
        if self._func is not None:
            ref = func_ref(fn)
            if ref != self._func:
                raise ValueError(
                    f"this executor's pool serves {self._func}; submit() takes that function "
                    f"(or its 'module:qualname'), not {ref} (use func=None to submit any)"
                )

    def _closed(self) -> RuntimeError:
        if _watch.exiting:
            return RuntimeError("cannot schedule new futures after interpreter shutdown")
        return RuntimeError("cannot schedule new futures after shutdown")

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        """Schedule ``fn(*args, **kwargs)`` (``fn`` must be the pool's function when it has
        one); return its :class:`concurrent.futures.Future`.

        Raises:
            ValueError: another function than the pool's; RuntimeError: after ``shutdown``,
            or once the program is ending."""
        return self.submit_with(fn, *args, **kwargs)

    def submit_with(
        self,
        fn: Any,
        /,
        *args: Any,
        on_event: Callable[..., object] | None = None,
        **kwargs: Any,
    ) -> cf.Future[Any]:
        """:meth:`submit` with anyfork's own options: ``on_event`` is called as
        ``on_event(*args)`` for each ``anyfork.worker.event(*args)`` this call raises (in the
        thread that reads it, before the future is settled); the executor's ``on_event`` gets
        the others.  (A keyword named ``on_event`` for ``fn`` goes through :meth:`submit`.)"""
        self._check(fn)
        if self._func is None:
            args = (fn, *args)  # _apply(fn, *args, **kwargs) in the worker
        try:
            return self._engine.submit(args, kwargs, None, on_event)
        except ClosedError:
            raise self._closed() from None

    def map(
        self,
        fn: Any,
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
    ) -> Results:
        """``map(fn, *iterables)`` in the workers: every item is taken now (as
        ``ProcessPoolExecutor.map`` does) and the results are yielded in order.

        ``chunksize=None`` (the default) lets the pool batch the items, sizing batches from
        the time the earlier ones took (for cheap calls many times faster than one call per
        item); ``chunksize=n`` sends ``n`` items per call, ``chunksize=1`` one call per item
        (the standard library's meaning; its default is 1).

        Raises (from the iterator): the first exception in item order, at its item's turn;
        ``TimeoutError`` if a result is not there ``timeout`` seconds after the call to
        ``map``.  Stopping early (or an exception) withdraws the items not sent yet.
        ``ValueError`` for a ``chunksize`` below 1, ``RuntimeError`` after ``shutdown``, at
        once."""
        self._check(fn)
        deadline = None if timeout is None else time.monotonic() + timeout
        engine = self._engine
        job = engine._job(chunksize)
        columns: list[Any] = columns_of(iterables)  # (Same stands in for a list, as range does)
        if self._func is None and columns:
            columns.insert(0, Same(fn, len(columns[0])))  # apply(fn, *items) in the worker
        job.feed(columns, True)
        delivery = Delivery(job, (), None, False, engine._queue_job, engine._withdraw_unit)
        try:
            delivery.start()
        except ClosedError:
            raise self._closed() from None
        return Results.of(bmap(delivery, deadline, engine.interrupt, cf.TimeoutError))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls; ``cancel_futures=True`` cancels those not started yet (a ``map``'s
        items not sent yet too).  ``wait=True`` returns once every call has finished, the
        workers have exited and the pool's threads are joined; ``wait=False`` returns at once
        and all that happens afterwards.  Interrupted (``KeyboardInterrupt``): the rest is
        done the fast way (workers killed, calls not started failed)."""
        if cancel_futures:
            self._engine.cancel_pending()
        self._engine.close(wait=wait)

    def __exit__(self, t: type[BaseException] | None, *rest: object) -> None:
        """``shutdown(wait=True)``, as the standard library does; after a ``KeyboardInterrupt``
        (a ``BaseException`` that is not an ``Exception``) in the block, the fast way."""
        if t is not None and not issubclass(t, Exception):
            self._engine.interrupt()
            self._engine.close(cancel=True)
            return
        self.shutdown(wait=True)


publish(globals())
