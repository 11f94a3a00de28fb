"""``anyfork.Pool``: an auto-scaling, load-balancing pool of RPC workers, driven by asyncio.

The pool's state and bookkeeping are its core's (``_core.PoolCore``, no I/O); this engine
carries out the core's effects with the event loop::

    pool(*args) ── a _Call future, queued at once ──> core.schedule(now) ── Send ──> the
        worker's client sends it now (client._submit); its reply resolves the _Call
    core ── Launch ──> task: template.fork().rpc(func)  ──> core.started / core.start_failed
         ── Halt ───> task: client.aclose()               (idle beyond `idle`, retired, closing)
         ── Wake ───> loop.call_at(at, schedule)

No task per call: a call is sent from whatever runs ``schedule`` (the caller, or the callback of
the call that freed the worker).  Worker death is noticed by the RPC client (``on_close`` for an
idle worker, ``on_error`` with calls outstanding): the worker leaves the pool, only its own calls
fail (``WorkerDiedError``), and the policy replaces it.  A call abandoned while running
(cancelled, timed out) on a sync-backend worker has its worker killed: that worker leaves the
rotation at that moment, so no later call is sent to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import warnings
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import Any

from .._core._process import Func, Process
from .._errors import ClosedError, SpawnError, WorkerDiedError
from .._rpc._start import Client
from .._util import publish, wait_for
from . import _policy
from ._core import Halt, Launch, PoolCore, Send
from ._map import Progress, Window, amap, window_size
from ._records import PoolStatistics, Worker
from ._system import rss, settings
from ._worker import STOP_TIMEOUT, Starter

__all__ = ["Pool"]


class _Worker(Worker):
    __slots__ = ("client", "task")

    def __init__(self, wid: int, now: float) -> None:
        super().__init__(wid, now)
        self.client: Client | None = None
        self.task: asyncio.Task[None] | None = None


class _Call(asyncio.Future[Any]):
    """A pool call: queued when it is made, sent when a worker takes it; resolves to the result.

    Cancelling it withdraws it while it is queued, and abandons it once sent (as cancelling a
    client's call does: the async backend cancels it in the worker, the sync backend kills the
    worker, which then leaves the pool's rotation at once)."""

    __slots__ = ("args", "inner", "kwargs", "pool", "timeout", "timer", "worker")

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    pool: Pool | None
    worker: _Worker | None  # the worker it was sent to; None while queued
    inner: asyncio.Future[Any] | None  # the client's call, once sent
    timer: asyncio.TimerHandle | None
    timeout: float | None

    def cancel(self, msg: Any = None) -> bool:
        if not super().cancel(msg):
            return False
        pool, self.pool = self.pool, None
        if pool is not None:
            pool._abandon(self)
        return True

    def withdraw(self) -> None:
        """For ``map`` stopping early: cancel it if it is still queued; a running call is left
        to finish, and its outcome is dropped without being reported as unretrieved."""
        if self.worker is None:
            self.cancel()
        else:
            self.add_done_callback(_retrieve)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class Pool:
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
            if it dies it is recreated.
            A template you pass is never closed by the pool, and if it dies every call the
            pool cannot serve fails with ``SpawnError``.
        func: the function, as ``"module:qualname"`` or a module-level function object.
        max: most workers at once (default: the CPUs this process may use, or ``idle`` if
            larger).
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
        rpc_options: passed to :func:`anyfork.rpc`: ``backend``, ``serializer``, ``init``,
            ``on_event`` (the pool filters its own retire events out; without a handler, user
            events are dropped), ``concurrency`` and ``timeout`` (each worker's start-up
            deadline, default 60 s).

    Raises:
        ValueError: a bad setting; TypeError: an unknown option, or a template that is not a
        Process.

    Scheduling: each call goes to the least-loaded worker below ``load``; when all are at
    ``load`` calls queue (in order) and workers start up to ``max``; idle workers beyond
    ``idle`` stop.  A worker may call ``anyfork.worker.retire()`` to be replaced: it finishes
    its calls and gets no new ones.  A worker that dies fails only the calls it was running
    (``WorkerDiedError``) and is replaced; queued calls are never lost.  A worker that cannot
    start fails the calls waiting for it with its start-up error (its own type, and an
    ``AnyforkError``: the type ``rpc()`` raises for the same mistake).

    Cancellation of ``await pool(...)``: a queued call is withdrawn; a running one is
    cancelled as the RPC client does (with the sync backend its worker is killed, and that
    worker's other running calls fail with ``WorkerDiedError``; it takes no new call).
    """

    def __init__(
        self,
        template: Process | None,
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
        **rpc_options: Any,
    ) -> None:
        self._starter = Starter(template, func, rpc_options)
        self._core: PoolCore[_Worker, _Call] = PoolCore(
            settings(max, idle, load, start, stop),
            max_calls=max_calls,
            max_memory=max_memory,
            new_worker=_Worker,
            measure=rss,
        )
        self._on_error = on_error
        self._on_close = on_close
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed: asyncio.Future[None] | None = None
        self._stoppers: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._in_schedule = False
        self._again = False
        self._watchers: list[asyncio.Future[None]] = []

    def __repr__(self) -> str:
        s = self.statistics()
        state = "closed" if self._core.closing else "open"
        return (
            f"<anyfork.Pool {self._starter.func} {state} workers={s.workers} busy={s.busy} "
            f"queued={s.queued}>"
        )

    # -- calls --------------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        """``await pool(*args, **kwargs)``: call the function in a worker; return its result.

        The call is queued at once, in order (it is sent as soon as a worker is free):
        ``pool(...)`` returns a future, so calls can be made without awaiting each one.

        Raises (when awaited): what the function raised (its own type), ``WorkerDiedError``
        if the worker died while running it, the start-up error if no worker could be started
        for it, ``ClosedError`` once the pool is closing.

        Cancellation: see the class docs."""
        return self._submit(args, kwargs, None)

    def call(self, *args: Any, timeout: float | None = None, **kwargs: Any) -> asyncio.Future[Any]:
        """Like ``pool(...)``, with a ``timeout`` in seconds for the whole call (waiting in
        the queue included): ``TimeoutError``.  A call that times out while running is
        abandoned as a cancelled one is (the sync backend kills its worker)."""
        return self._submit(args, kwargs, timeout)

    def _submit(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> _Call:
        loop = self._bind()
        call = _Call(loop=loop)
        call.args, call.kwargs = args, kwargs
        call.worker = call.inner = call.timer = None
        call.timeout = timeout
        if self._core.closing:
            call.pool = None
            call.set_exception(ClosedError("the pool is closed"))
            return call
        call.pool = self
        if timeout is not None:
            call.timer = loop.call_later(timeout, self._expire, call)
        self._core.submit(call)
        self._schedule()
        return call

    def _send(self, worker: _Worker, call: _Call) -> bool:
        """Send a dispatched call on its worker's client; ``False`` if the worker turned out
        unable to take it (it has left the pool and the call is queued again)."""
        client = worker.client
        assert client is not None
        if not client.usable:
            # It died, or was condemned, after its last call and before this one was sent:
            # the call never ran, so it queues again (first); the worker leaves.
            self._fail_calls(self._core.requeue([call]), ClosedError("the pool was cancelled"))
            self._lost(worker, None)
            return False
        call.worker = worker
        # The client's own entry point, so that a keyword named "timeout" goes to the function.
        inner = call.inner = client._submit(call.args, call.kwargs)
        inner.add_done_callback(functools.partial(self._returned, call))
        return True

    def _returned(self, call: _Call, inner: asyncio.Future[Any]) -> None:
        """The client's call is over: its outcome is the pool call's, unless that is settled
        already (cancelled, timed out)."""
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None
        exc = None if inner.cancelled() else inner.exception()
        if not call.done():
            if exc is None:
                call.set_result(inner.result())
            else:
                call.set_exception(exc)
        worker = call.worker
        assert worker is not None
        assert self._loop is not None
        completed = not inner.cancelled() and not isinstance(exc, (WorkerDiedError, ClosedError))
        self._core.finished(worker, self._loop.time(), completed=completed)
        self._schedule()

    def _abandon(self, call: _Call) -> None:
        """The caller gave up on ``call`` (it was cancelled)."""
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None
        if call.worker is None:
            if self._core.withdraw(call):
                self._notify()
            return
        self._abandon_sent(call)

    def _expire(self, call: _Call) -> None:
        call.timer = None
        if call.done() or (call.inner is not None and call.inner.done()):
            return  # its outcome is there (the reply arrived with the deadline)
        call.pool = None
        call.set_exception(TimeoutError(f"the pool call timed out after {call.timeout} s"))
        if call.worker is None:
            if self._core.withdraw(call):
                self._notify()
            return
        self._abandon_sent(call)

    def _abandon_sent(self, call: _Call) -> None:
        """Abandon a call the worker has: the client cancels it (async backend) or kills the
        worker (sync backend), and a worker so condemned leaves the rotation now."""
        worker, inner = call.worker, call.inner
        assert worker is not None
        assert inner is not None
        inner.cancel()
        client = worker.client
        if client is not None and not client.usable:
            self._lost(worker, None)

    # -- the policy loop -------------------------------------------------------------------

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._closed = loop.create_future()
            self._schedule()
        elif self._loop is not loop:
            raise RuntimeError("this pool belongs to another event loop")
        return loop

    def _schedule(self) -> None:
        """Ask the core what to do, and do it (re-entrant calls just ask for another round)."""
        loop = self._loop
        if loop is None:
            return
        if self._in_schedule:
            self._again = True
            return
        self._in_schedule = True
        try:
            again = True
            while again:
                self._again = False
                again = not self._apply(self._core.schedule(loop.time())) or self._again
        finally:
            self._in_schedule = False
        self._notify()

    def _apply(self, effects: list[Any]) -> bool:
        """Carry out the core's effects; ``False`` if the core must be asked again."""
        loop = self._loop
        assert loop is not None
        settled = True
        for effect in effects:
            if isinstance(effect, Send):
                settled = self._send(effect.worker, effect.call) and settled
            elif isinstance(effect, Launch):
                worker = effect.worker
                worker.task = loop.create_task(self._start(worker))
            elif isinstance(effect, Halt):
                self._stop(effect.worker)
            elif isinstance(effect, _policy.Wake):
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = loop.call_at(effect.at, self._wake)
        return settled

    def _wake(self) -> None:
        self._timer = None
        self._schedule()

    def _notify(self) -> None:
        watchers, self._watchers = self._watchers, []
        for fut in watchers:
            if not fut.done():
                fut.set_result(None)
        closed = self._closed
        if self._core.drained and not self._stoppers and closed is not None and not closed.done():
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            closed.set_result(None)

    # -- workers --------------------------------------------------------------------------------

    async def _spawn(self, worker: _Worker) -> Client:
        starter = self._starter
        options = starter.options(
            functools.partial(self._retire, worker),
            on_error=functools.partial(self._lost, worker),
            on_close=functools.partial(self._lost, worker, None),
        )
        for retry in (True, False):
            tmpl = starter.get()
            try:
                return await tmpl.fork().rpc(starter.func, **options)
            except SpawnError as exc:
                error = starter.failed(tmpl, exc, retry)
            if error is not None:
                raise error
        raise AssertionError("unreachable")  # pragma: no cover

    async def _start(self, worker: _Worker) -> None:
        core = self._core
        try:
            client = await self._spawn(worker)
        except asyncio.CancelledError:
            core.forget(worker)
            self._notify()
            return
        except Exception as exc:
            error, calls = core.start_failed(worker, exc)
            self._fail_calls(calls, error)
            self._report(error)
            self._schedule()
            return
        worker.client = client
        assert self._loop is not None
        if not core.started(worker, client.pid, self._loop.time()):
            client.abort()
            return
        self._schedule()

    def _retire(self, worker: _Worker) -> None:
        if self._core.retire(worker):
            self._schedule()

    def _fail_calls(self, calls: list[_Call], error: BaseException) -> None:
        for call in calls:
            if call.timer is not None:
                call.timer.cancel()
                call.timer = None
            if not call.done():
                call.pool = None
                call.set_exception(error)

    def _lost(self, worker: _Worker, exc: BaseException | None) -> None:
        """The worker cannot take calls any more: its connection ended (``on_close`` /
        ``on_error``), it was found dead, or a call abandoned on it condemned it."""
        first = self._core.lost(worker)
        if first:
            client = worker.client
            if client is not None and client._sock is not None:
                # Its client has not finished with it yet: let it do that in its own time
                # (failing what the worker was running), and make sure the socket goes.
                self._stop(worker)
        if exc is not None and worker.dead:  # not one the pool was stopping (or cancelled)
            self._report(exc)
        if first:
            self._schedule()

    def _stop(self, worker: _Worker) -> None:
        worker.stopping = True
        client = worker.client
        if client is None:
            # Still starting: abandon the start (the child sees EOF and exits); closing waits
            # for that task too.
            task = worker.task
            if task is not None and not task.done():
                task.cancel()
                self._stoppers.add(task)
                task.add_done_callback(self._stopper_done)
            return
        task = asyncio.ensure_future(self._close_client(client))
        self._stoppers.add(task)
        task.add_done_callback(self._stopper_done)

    async def _close_client(self, client: Client) -> None:
        with contextlib.suppress(Exception):
            await client.aclose(timeout=STOP_TIMEOUT)

    def _stopper_done(self, task: asyncio.Task[None]) -> None:
        self._stoppers.discard(task)
        self._notify()

    def _report(self, exc: BaseException) -> None:
        if self._on_error is not None:
            try:
                self._on_error(exc)
            except Exception as err:
                loop = self._loop
                if loop is not None:
                    loop.call_exception_handler(
                        {"message": "anyfork Pool on_error callback failed", "exception": err}
                    )

    # -- introspection -------------------------------------------------------------------------

    def statistics(self) -> PoolStatistics:
        """A snapshot of the pool's workers, queue and totals (see :class:`PoolStatistics`)."""
        return self._core.statistics()

    def worker_pids(self) -> list[int]:
        """The pids of the pool's ready workers, oldest first."""
        return self._core.worker_pids()

    async def wait_until(
        self, predicate: Callable[[PoolStatistics], bool], *, timeout: float | None = None
    ) -> PoolStatistics:
        """Wait until ``predicate(pool.statistics())`` holds; return those statistics.

        Checked after every change of the pool's state, so it never polls:
        ``await pool.wait_until(lambda s: s.workers == 0, timeout=10)``.

        Raises:
            TimeoutError: after ``timeout`` seconds.

        Cancellation leaves the pool as it was."""
        loop = self._bind()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            stats = self.statistics()
            if predicate(stats):
                return stats
            fut: asyncio.Future[None] = loop.create_future()
            self._watchers.append(fut)
            if deadline is None:
                await fut
                continue
            try:
                await wait_for(fut, max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise TimeoutError(
                    f"the pool did not reach the condition within {timeout} s: {stats}"
                ) from None

    async def wait_for(
        self, predicate: Callable[[PoolStatistics], bool], *, timeout: float | None = None
    ) -> PoolStatistics:
        """Deprecated alias of :meth:`wait_until` (``asyncio.wait_for`` is another thing)."""
        warnings.warn("Pool.wait_for() is deprecated: use Pool.wait_until()", DeprecationWarning, 2)
        return await self.wait_until(predicate, timeout=timeout)

    # -- map ---------------------------------------------------------------------------------

    def map(
        self,
        *iterables: Iterable[Any],
        max_in_flight: int | None = None,
        timeout: float | None = None,
        progress: bool | Progress = False,
    ) -> AsyncGenerator[Any, None]:
        """Call the function on each item (``pool.map(xs)``: ``func(x)``; ``pool.map(xs, ys)``:
        ``func(x, y)``, as the builtin ``map`` zips) and yield the results in order.

        At most ``max_in_flight`` calls are submitted at once (default: twice the pool's
        capacity, ``2 * max * load``), so a huge or endless iterable is consumed lazily.  The
        first exception is raised when its result's turn comes.  Closing the iterator early
        withdraws the calls still queued and lets those running finish (their results are
        dropped); after a ``break`` that happens when the generator is finalised, so use
        ``async with contextlib.aclosing(pool.map(...)) as results:`` to make it immediate.
        ``timeout`` applies to each call.

        ``progress=True`` shows a tqdm bar if tqdm is installed (nothing otherwise);
        ``progress=callable`` is called as ``callable(done, total)`` after each completed call
        (``total`` is ``None`` when the iterables have no length).

        Raises:
            TypeError: no iterable; ValueError: a bad ``max_in_flight``."""
        window: Window[_Call] = Window(
            iterables,
            window_size(max_in_flight, self._core.settings),
            progress,
            lambda args: self._submit(args, {}, timeout),
            _Call.withdraw,
        )
        return amap(window)

    # -- closing ----------------------------------------------------------------------------------

    async def aclose(self, *, cancel: bool = False, timeout: float | None = None) -> None:
        """Close the pool: queued calls still run, then every worker stops; returns once all
        have exited (and the pool's own template), after ``on_close``.  New calls raise
        ``ClosedError``.

        ``cancel=True`` is :meth:`cancel` first: workers are killed, queued calls fail.

        Raises:
            TimeoutError: after ``timeout`` seconds, once the rest is cancelled that way.

        Cancellation: as ``timeout``."""
        core = self._core
        if self._loop is None:
            core.close()
            self._finish_close()
            return
        self._bind()
        if cancel:
            self.cancel()
        if not core.closing:
            core.close()
            self._schedule()
        closed = self._closed
        assert closed is not None
        try:
            await wait_for(asyncio.shield(closed), timeout)
        except BaseException:
            self.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.shield(closed)
            self._finish_close()
            raise
        self._finish_close()

    def _finish_close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._starter.close()
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None  # once, however often we get here
            on_close()

    def cancel(self) -> None:
        """Close the pool the fast way, now: queued calls fail with ``ClosedError``, workers
        are killed (their running calls fail with ``WorkerDiedError``), starting ones
        abandoned.  ``await pool.aclose()`` afterwards waits until they have exited."""
        calls, workers = self._core.cancel()
        self._fail_calls(calls, ClosedError("the pool was cancelled"))
        for worker in workers:
            client = worker.client
            if worker.pid is not None and client is not None and client.usable:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGKILL)
            self._stop(worker)
        self._notify()

    async def __aenter__(self) -> Pool:
        """Open the pool and wait for its initial ``idle`` workers; a worker that cannot start
        (a bad function name, a failing ``init``) raises its error here."""
        self._bind()
        try:
            await self.wait_until(lambda s: s.starting == 0 or s.failed_starts > 0)
        except BaseException:
            await self.aclose(cancel=True)
            raise
        error = self._core.start_error
        if error is not None and self.statistics().started == 0:
            await self.aclose(cancel=True)
            raise error
        return self

    async def __aexit__(self, t: type[BaseException] | None, *rest: object) -> None:
        """Graceful ``aclose()``; after an exception in the block, ``aclose(cancel=True)``."""
        await self.aclose(cancel=t is not None)


publish(globals())
