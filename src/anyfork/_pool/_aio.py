"""``anyfork.Pool``: an auto-scaling, load-balancing pool of RPC workers forked from a template.

The pool keeps its own records (workers, their loads, the queue) and asks the pure policy
(``_policy.decide``) what to do after every change; it carries out the actions::

    caller ── pool(*args) ──> queue ──(Dispatch w)──> caller's own task sends the call on w's
                                                      RPC client and awaits the result
    policy ── Start ──> task: template.fork().rpc(func)  ──> ready (or a start failure)
           ── Stop w ─> task: client.aclose()             (idle beyond `idle`, retired, closing)
           ── Wake t ─> loop.call_at(t, schedule)

A dispatched call runs in the caller's task (no task per call).  Worker death is noticed by the
RPC client (``on_close`` for an idle worker, ``on_error`` with calls outstanding): the worker
leaves the pool, only its own calls fail (``WorkerDiedError``), and the policy replaces it.  A
call handed to a worker that died before the call was sent is queued again, never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import Any

from .._core._process import Func, Process, func_ref
from .._errors import ClosedError, SpawnError
from .._rpc._start import Client
from .._util import publish, wait_for
from . import _policy
from ._records import (
    _RETIRE_MARKS,
    STOP_TIMEOUT,
    PoolStatistics,
    PoolTemplate,
    Totals,
    _Call,
    _Worker,
    check_recycling,
    policy_view,
    rss,
    settings,
    snapshot,
    worker_options,
)

__all__ = ["Pool"]


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

    Scheduling: each call goes to the least-loaded worker below ``load``; when all are at
    ``load`` calls queue (in order) and workers start up to ``max``; idle workers beyond
    ``idle`` stop.  A worker may call ``anyfork.worker.retire()`` to be replaced: it finishes
    its calls and gets no new ones.  A worker that dies fails only the calls it was running
    (``WorkerDiedError``) and is replaced; queued calls are never lost.

    Cancellation of ``await pool(...)``: a queued call is withdrawn; a running one is
    cancelled as the RPC client does (with the sync backend its worker is killed, and that
    worker's other calls fail with ``WorkerDiedError``).
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
        self._rpc_options, self._user_on_event = worker_options(rpc_options)
        self._settings = settings(max, idle, load, start, stop)
        check_recycling(max_calls, max_memory)
        self._func = func_ref(func)
        self._templates = PoolTemplate(template, self._func)
        self._max_calls = max_calls
        self._max_memory = max_memory
        self._on_error = on_error
        self._on_close = on_close
        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers: dict[int, _Worker] = {}
        self._queue: deque[_Call] = deque()
        self._next_id = 0
        self._last_start: float | None = None
        self._last_stop: float | None = None
        self._start_failed = False
        self._start_error: BaseException | None = None
        self._closing = False
        self._cancelled = False
        self._closed: asyncio.Future[None] | None = None
        self._stoppers: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._in_schedule = False
        self._again = False
        self._watchers: list[asyncio.Future[None]] = []
        self._totals = Totals()

    def __repr__(self) -> str:
        s = self.statistics()
        state = "closed" if self._closing else "open"
        return (
            f"<anyfork.Pool {self._func} {state} workers={s.workers} busy={s.busy} "
            f"queued={s.queued}>"
        )

    # -- calls --------------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``await pool(*args, **kwargs)``: call the function in a worker; return its result.

        Raises what the function raised (its own type), ``WorkerDiedError`` if the worker died
        while running it, ``SpawnError`` if no worker could be started for it,
        ``ClosedError`` once the pool is closing."""
        return self._call(args, kwargs, None)

    def call(self, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Like ``pool(...)``, with a ``timeout`` in seconds for the whole call (waiting in
        the queue included): ``TimeoutError``.  A call that times out while running is
        cancelled as the RPC client does it (the sync backend kills its worker)."""
        return self._call(args, kwargs, timeout)

    async def _call(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        on_dispatch: Callable[[], bool] | None = None,
    ) -> Any:  # Any: whatever the worker's function returns
        """The call, queued until a worker takes it.  ``on_dispatch()`` runs just before the
        call is sent (it has a worker, and will run); if it returns ``False`` the call is
        dropped instead and ``None`` returned (the executor's cancelled futures)."""
        loop = self._bind()
        if self._closing:
            raise ClosedError("the pool is closed")
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            call = _Call(args, kwargs, loop.create_future())
            self._queue.append(call)
            if deadline is not None:
                call.timer = loop.call_at(deadline, self._expire, call, timeout)
            self._schedule()
            try:
                worker = await call.fut
            except asyncio.CancelledError:
                self._withdraw(call)
                raise
            finally:
                if call.timer is not None:
                    call.timer.cancel()
            client = worker.client
            if worker.dead or client is None or client._eof or client._failure is not None:
                # It died after the call was handed to it but before the call was sent: the
                # call never ran, so it queues again (the death is handled as it is noticed).
                self._lost(worker, None)
                continue
            if on_dispatch is not None and not on_dispatch():
                self._finished(worker, completed=False)
                return None
            # The client's own entry points, so that a keyword named "timeout" still goes to
            # the function: the call is sent now, its future resolves to the result.
            fut = client._submit(args, kwargs)
            try:
                if deadline is None:
                    return await fut
                return await client._with_timeout(fut, max(0.0, deadline - loop.time()))
            finally:
                self._finished(worker)

    def _expire(self, call: _Call, timeout: float | None) -> None:
        if not call.fut.done():
            self._withdraw(call)
            call.fut.set_exception(TimeoutError(f"the pool call timed out after {timeout} s"))

    def _withdraw(self, call: _Call) -> None:
        """The caller gave up on ``call``: out of the queue, or its worker slot released."""
        if call.fut.done() and not call.fut.cancelled() and call.fut.exception() is None:
            self._finished(call.fut.result(), completed=False)
            return
        with contextlib.suppress(ValueError):
            self._queue.remove(call)
            self._notify()

    def _finished(self, worker: _Worker, completed: bool = True) -> None:
        if completed:
            self._totals.calls += 1
        if worker.dead or worker.stopping:
            self._schedule()
            return
        worker.load -= 1
        loop = self._loop
        assert loop is not None
        if worker.load == 0:
            worker.idle_since = loop.time()
        if self._max_memory is not None and worker.pid is not None and not worker.retiring:
            size = rss(worker.pid)
            if size is not None and size > self._max_memory:
                worker.retiring = True
        self._schedule()

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

    def _view(self, now: float) -> _policy.PoolView:
        return policy_view(
            self._workers.values(),
            len(self._queue),
            self._last_start,
            self._last_stop,
            self._closing,
            self._start_failed,
        )

    def _schedule(self) -> None:
        """Ask the policy what to do, and do it (re-entrant calls just ask for another round)."""
        loop = self._loop
        if loop is None or self._cancelled:
            self._notify()
            return
        if self._in_schedule:
            self._again = True
            return
        self._in_schedule = True
        try:
            while True:
                self._again = False
                now = loop.time()
                self._apply(now, _policy.decide(now, self._view(now), self._settings))
                if not self._again:
                    break
        finally:
            self._in_schedule = False
        self._notify()

    def _apply(self, now: float, actions: list[_policy.Action]) -> None:
        loop = self._loop
        assert loop is not None
        for action in actions:
            if isinstance(action, _policy.Dispatch):
                worker = self._workers[action.worker]
                # A caller cancelled a moment ago may still be queued (its task removes it
                # when it runs): skip it.
                while self._queue and self._queue[0].fut.done():
                    self._queue.popleft()
                if not self._queue:
                    continue
                call = self._queue.popleft()
                worker.load += 1
                worker.dispatched += 1
                if self._max_calls is not None and worker.dispatched >= self._max_calls:
                    worker.retiring = True
                call.fut.set_result(worker)
            elif isinstance(action, _policy.Start):
                self._next_id += 1
                worker = _Worker(self._next_id, now)
                self._workers[worker.id] = worker
                self._last_start = now
                worker.task = loop.create_task(self._start(worker))
            elif isinstance(action, _policy.Stop):
                worker = self._workers.pop(action.worker)
                if action.why == "idle":
                    self._last_stop = now
                elif action.why == "retired":
                    self._totals.retired += 1
                self._stop(worker)
            else:
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = loop.call_at(action.at, self._wake)

    def _wake(self) -> None:
        self._timer = None
        self._schedule()

    def _notify(self) -> None:
        watchers, self._watchers = self._watchers, []
        for fut in watchers:
            if not fut.done():
                fut.set_result(None)
        self._check_closed()

    def _check_closed(self) -> None:
        closed = self._closed
        if (
            self._closing
            and closed is not None
            and not closed.done()
            and not self._workers
            and not self._queue
            and not self._stoppers
        ):
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            closed.set_result(None)

    # -- workers --------------------------------------------------------------------------------

    async def _spawn(self, worker: _Worker) -> Client:
        def on_event(*args: Any) -> None:
            if len(args) == 1 and args[0] in _RETIRE_MARKS:
                if not worker.retiring:
                    worker.retiring = True
                    self._schedule()
            elif self._user_on_event is not None:
                self._user_on_event(*args)

        options = dict(
            self._rpc_options,
            on_event=on_event,
            on_error=lambda exc: self._lost(worker, exc),
            on_close=lambda: self._lost(worker, None),
        )
        for attempt in (1, 2):
            tmpl = self._templates.get()
            try:
                return await tmpl.fork().rpc(self._func, **options)
            except SpawnError:
                if not self._templates.retry_after(tmpl, attempt):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _start(self, worker: _Worker) -> None:
        try:
            client = await self._spawn(worker)
        except asyncio.CancelledError:
            self._workers.pop(worker.id, None)
            return
        except Exception as exc:
            self._workers.pop(worker.id, None)
            self._totals.failed_starts += 1
            self._start_failed = True
            self._start_error = exc
            if not self._workers:
                # Nobody can serve the queue: fail it rather than hang.
                self._fail_queue(exc)
            self._report(exc)
            self._schedule()
            return
        worker.client = client
        worker.pid = client.pid
        if self._workers.get(worker.id) is not worker or self._cancelled:
            client.abort()
            return
        loop = self._loop
        assert loop is not None
        worker.ready = True
        worker.idle_since = loop.time()
        self._totals.started += 1
        self._start_failed = False
        self._schedule()

    def _fail_queue(self, cause: BaseException) -> None:
        queue, self._queue = self._queue, deque()
        for call in queue:
            if not call.fut.done():
                err = SpawnError(
                    f"no pool worker could be started: {type(cause).__name__}: {cause}"
                )
                err.__cause__ = cause
                call.fut.set_exception(err)

    def _lost(self, worker: _Worker, exc: BaseException | None) -> None:
        """The worker's connection ended (``on_close``/``on_error``), or it was found dead."""
        if worker.stopping or worker.dead:
            return
        worker.dead = True
        if self._workers.get(worker.id) is worker:
            del self._workers[worker.id]
            self._totals.died += 1
        if worker.client is not None and worker.client._sock is not None:
            # Found dead before the client had failed its calls: let it finish that in its own
            # time, and make sure the socket goes.
            self._stop(worker)
        if exc is not None:
            self._report(exc)
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
        self._check_closed()

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
        return snapshot(self._workers.values(), len(self._queue), self._totals)

    def worker_pids(self) -> list[int]:
        """The pids of the pool's ready workers, oldest first."""
        return [w.pid for w in self._workers.values() if w.ready and w.pid is not None]

    async def wait_for(
        self, predicate: Callable[[PoolStatistics], bool], *, timeout: float | None = None
    ) -> PoolStatistics:
        """Wait until ``predicate(pool.statistics())`` holds; return those statistics.

        Checked after every change of the pool's state, so it never polls:
        ``await pool.wait_for(lambda s: s.workers == 0, timeout=10)``.  ``TimeoutError``
        after ``timeout`` seconds.  Cancellation leaves the pool as it was."""
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
                await asyncio.wait_for(fut, max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise TimeoutError(
                    f"the pool did not reach the condition within {timeout} s: {stats}"
                ) from None

    # -- map ---------------------------------------------------------------------------------

    def map(
        self,
        *iterables: Iterable[Any],
        max_in_flight: int | None = None,
        timeout: float | None = None,
        progress: bool | Callable[[int, int | None], object] = False,
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
        (``total`` is ``None`` when the iterables have no length)."""
        from ._map import pool_map

        return pool_map(self, iterables, max_in_flight, timeout, progress)

    # -- closing ----------------------------------------------------------------------------------

    async def aclose(self, *, cancel: bool = False, timeout: float | None = None) -> None:
        """Close the pool: queued calls still run, then every worker stops; returns once all
        have exited (and the pool's own template), after ``on_close``.  New calls raise
        ``ClosedError``.

        ``cancel=True`` is :meth:`cancel` first: workers are killed, queued calls fail.
        After ``timeout`` seconds the rest is cancelled that way and ``TimeoutError`` raised.
        Cancellation: as ``timeout``."""
        if self._loop is None:
            self._closing = True
            self._finish_close()
            return
        self._bind()
        if cancel:
            self.cancel()
        if not self._closing:
            self._closing = True
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
        self._templates.close()
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None  # once, however often we get here
            on_close()

    def cancel(self) -> None:
        """Close the pool the fast way, now: queued calls fail with ``ClosedError``, workers
        are killed (their running calls fail with ``WorkerDiedError``), starting ones
        abandoned.  ``await pool.aclose()`` afterwards waits until they have exited."""
        self._closing = True
        self._cancelled = True
        queue, self._queue = self._queue, deque()
        for call in queue:
            if not call.fut.done():
                call.fut.set_exception(ClosedError("the pool was cancelled"))
        workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            if worker.pid is not None and worker.client is not None and not worker.client._eof:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGKILL)
            self._stop(worker)
        self._notify()

    async def __aenter__(self) -> Pool:
        """Open the pool and wait for its initial ``idle`` workers; a worker that cannot start
        (a bad function name, a failing ``init``) raises its error here."""
        self._bind()
        try:
            await self.wait_for(lambda s: s.starting == 0 or s.failed_starts > 0)
        except BaseException:
            await self.aclose(cancel=True)
            raise
        error = self._start_error
        if error is not None and self.statistics().started == 0:
            await self.aclose(cancel=True)
            raise error
        return self

    async def __aexit__(self, t: type[BaseException] | None, *rest: object) -> None:
        """Graceful ``aclose()``; after an exception in the block, ``aclose(cancel=True)``."""
        await self.aclose(cancel=t is not None)


publish(globals())
