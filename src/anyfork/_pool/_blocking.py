"""The pool without an event loop: ``BlockingPool`` and the ``concurrent.futures`` face.

Both are faces over the threads engine (``_threads.ThreadsEngine``): a thread per worker, and a
caller that waits for its call runs it on the worker's connection itself when it can.  The
threads exist only while the pool is open, and nothing is ever forked from this process (workers
are forked by the template), so they make no fork unsafe.  A pool left open at exit is closed
the graceful way, as the standard library's executors are.
"""

from __future__ import annotations

import concurrent.futures as cf
import warnings
from collections.abc import Callable, Generator, Iterable
from typing import Any

from .._core._process import Func, Process, func_ref
from .._errors import ClosedError
from .._util import publish
from ._map import Progress, Window, bmap, window_size
from ._records import PoolStatistics, describe
from ._threads import ThreadsEngine

__all__ = ["BlockingPool", "PoolExecutor"]

#: The function a PoolExecutor without a fixed function serves (calls ``fn(*args, **kw)``).
_APPLY = "anyfork.worker:_apply"


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

    Interrupting a call (``KeyboardInterrupt``): a call not started is withdrawn; one the
    caller runs itself is abandoned as the RPC client does it (the sync backend kills its
    worker, which leaves the pool at once); one a worker's thread runs finishes there.
    """

    def __init__(self, template: Process | None, func: Func, **options: Any) -> None:
        self._engine = ThreadsEngine(template, func, **options)
        self._engine.open(wait=True)

    def __repr__(self) -> str:
        engine = self._engine
        return describe("BlockingPool", engine.func, engine.closing, self.statistics())

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function in a worker and return its result (see ``Pool.__call__``)."""
        return self._engine.call(args, kwargs, None)

    def call(self, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Like ``pool(...)`` with a ``timeout`` in seconds (see ``Pool.call``).

        Raises:
            TimeoutError: the call took longer (queued or running); a running call is
            abandoned (the sync backend kills its worker, which leaves the pool at once)."""
        return self._engine.call(args, kwargs, timeout)

    def map(
        self,
        *iterables: Iterable[Any],
        max_in_flight: int | None = None,
        timeout: float | None = None,
        progress: bool | Progress = False,
    ) -> Generator[Any, None, None]:
        """Yield the results of ``func(*items)`` in order, with at most ``max_in_flight``
        calls in flight (see ``Pool.map``).  Closing the generator early withdraws the calls
        still queued and lets those running finish.

        Raises:
            TypeError: no iterable; ValueError: a bad ``max_in_flight``."""
        engine = self._engine
        window: Window[cf.Future[Any]] = Window(
            iterables,
            window_size(max_in_flight, engine.settings),
            progress,
            lambda args: engine.submit(args, {}, timeout),
            cf.Future.cancel,
        )
        return bmap(window)

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
    """A :class:`concurrent.futures.Executor` backed by a pool of RPC workers.

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
    the workers and joins the threads; an executor never shut down is shut down that way at
    exit.  ``future.cancel()`` succeeds until the call starts (queued, or handed to a busy
    worker).  Worker death fails only that call's future (``WorkerDiedError``); the executor
    stays usable, unlike ``ProcessPoolExecutor``.  A worker that cannot start fails the futures
    waiting for it with its start-up error (its own type, and an ``AnyforkError``).
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
        # Built now so that bad settings raise here; workers start with the first submit().
        self._engine = ThreadsEngine(template, self._func or _APPLY, **options)

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        """Schedule ``fn(*args, **kwargs)`` (``fn`` must be the pool's function when it has
        one); return its :class:`concurrent.futures.Future`.

        Raises:
            ValueError: another function than the pool's; RuntimeError: after shutdown."""
        if self._func is None:
            args, kwargs = (fn, args, kwargs), {}
        else:
            ref = func_ref(fn)
            if ref != self._func:
                raise ValueError(
                    f"this executor's pool serves {self._func}; submit() takes that function "
                    f"(or its 'module:qualname'), not {ref} (use func=None to submit any)"
                )
        try:
            return self._engine.submit(args, kwargs)
        except ClosedError:
            raise RuntimeError("cannot schedule new futures after shutdown") from None

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls; ``cancel_futures=True`` cancels those not started yet.  ``wait=True``
        returns once every call has finished, the workers have exited and the pool's threads
        are joined; ``wait=False`` returns at once and all that happens afterwards."""
        if cancel_futures:
            self._engine.cancel_pending()
        self._engine.close(wait=wait)


publish(globals())
