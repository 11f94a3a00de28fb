"""The asyncio engine under ``anyfork.Pool``::

    pool(*args) ── a Call future ── core.schedule(now) ── Send ──> client._submit now; its
                                                                   reply resolves the Call
    core ── Launch ──> task: template.fork().rpc(func) ──> core.started / core.start_failed
         ── Halt ───> task: client.aclose()
         ── Wake ───> loop.call_at(at, schedule)

No task per call: a call is sent from whatever runs ``schedule`` (the caller, or the callback of
the call that freed the worker).  The RPC client notices a worker's death (``on_close`` when
idle, ``on_error`` with calls): only its own calls fail, and the policy replaces it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._errors import ClosedError, WorkerDiedError
from .._rpc import _for_pools as rpc
from .._rpc._batching import service_time
from .._rpc._start import Client
from .._util import wait_for
from . import _policy
from ._aio_calls import Call, answered
from ._core import Halt, Job, Launch, Send
from ._engine import Engine, as_reported, not_reached, opened
from ._map import MapJob, Unit
from ._records import PoolStatistics, Worker
from ._worker import STOP_TIMEOUT, kill


@dataclass(slots=True, eq=False)
class _Worker(Worker):
    client: Client | None = None
    task: asyncio.Task[None] | None = None
    answered: float | None = None  # when it last answered a call (a map's sizes)


class AsyncEngine(Engine[_Worker, Call]):
    """The machinery of :class:`anyfork.Pool`; arguments as for ``_engine.Engine``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed: asyncio.Future[None] | None = None
        self._stoppers: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._in_schedule = False
        self._again = False
        self._watchers: list[asyncio.Future[None]] = []

    def _new_worker(self, wid: int, now: float) -> _Worker:
        return _Worker(wid, now)

    def _submit(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        on_event: Callable[..., object] | None = None,
    ) -> Call:
        loop = self._bind()
        call = Call(loop, args, kwargs, timeout, on_event)
        try:
            self._admit()
        except ClosedError as exc:
            call.pool = None
            call.set_exception(exc)
            return call
        call.pool = self
        if timeout is not None:
            call.timer = loop.call_later(timeout, self._expire, call)
        self._core.submit(call)
        self._schedule()
        return call

    def _queue_job(self, job: MapJob[Call]) -> None:
        self._bind()
        self._admit()
        self._core.submit_job(job)
        self._schedule()

    def _unit(self, timeout: float | None, job: MapJob[Call], unit: Unit) -> Call:
        loop = self._loop
        assert loop is not None
        call = Call(loop, (), {}, None if timeout is None else timeout * unit.n)
        call.job, call.unit, call.pool = job, unit, self
        unit.call = call
        if call.timeout is not None:
            call.timer = loop.call_later(call.timeout, self._expire, call)
        call.add_done_callback(answered)
        return call

    def _withdraw_unit(self, unit: Unit) -> None:
        # One sent is left to finish: abandoning it would kill a sync-backend worker.
        if unit.call is not None:
            unit.call.withdraw()

    def _send(self, worker: _Worker, call: Call) -> bool:
        """``False`` if the worker turned out unable to take the call (it has left the pool and
        the call is queued again)."""
        client = worker.client
        assert client is not None
        if not client.usable:
            # Dead or condemned before this call was sent: the call queues again (first).
            self._fail_calls(
                list(self._core.requeue([call])), ClosedError("the pool was cancelled")
            )
            self._lost(worker, None)
            return False
        call.worker = worker
        unit = call.unit
        if unit is None:
            # (The client's own entry point: a keyword named "timeout" goes to the function.)
            inner = rpc.submit(client, call.args, call.kwargs, call.on_event)
            call.args, call.kwargs = (), {}  # encoded: the call keeps nothing of the caller's
        else:
            assert self._loop is not None
            assert unit.columns is not None
            call.sent = self._loop.time()
            if unit.n == 1:
                inner = rpc.submit(client, unit.args(), {})
            else:
                inner = rpc.submit_batch(client, unit.columns)
        call.inner = inner
        inner.add_done_callback(functools.partial(self._returned, call))
        return True

    def _returned(self, call: Call, inner: asyncio.Future[Any]) -> None:
        """The client's call is over: its outcome is the pool call's, unless that is settled
        already (cancelled, timed out)."""
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None
        exc = None if inner.cancelled() else inner.exception()
        if exc is not None:
            exc = as_reported(exc)
        call.pool = call.inner = None  # a future kept by its caller keeps nothing else alive
        worker = call.worker
        assert worker is not None
        assert self._loop is not None
        now = self._loop.time()
        completed = not inner.cancelled() and not isinstance(exc, (WorkerDiedError, ClosedError))
        if call.unit is not None and completed:
            call.took = service_time(call.sent, now, worker.answered)
        worker.answered = now
        if not call.done():
            if exc is not None:
                call.set_exception(exc)
                if self._core.cancelled:
                    call.exception()  # the pool's cancel failed it: no "never retrieved" log
            elif call.unit is not None and call.unit.n == 1:
                call.set_result([inner.result()])  # a one-item list: see MapJob.answered
            else:
                call.set_result(inner.result())
        items = 1 if call.unit is None else call.unit.n
        self._core.finished(worker, now, completed=completed, items=items)
        self._schedule()

    def _expire(self, call: Call) -> None:
        call.timer = None
        if call.done() or (call.inner is not None and call.inner.done()):
            return  # its outcome is there (the reply arrived with the deadline)
        call.pool = None
        call.set_exception(TimeoutError(f"the pool call timed out after {call.timeout} s"))
        self._abandon(call)

    def _abandon(self, call: Call) -> None:
        """``call`` was cancelled or timed out: withdraw it if queued; abandon it as its client
        does if sent (the sync backend condemns the worker: it leaves the rotation now)."""
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None
        worker, inner = call.worker, call.inner
        if worker is None or inner is None:
            if self._core.withdraw(call):
                self._notify()
            return
        inner.cancel()
        client = worker.client
        if client is not None and not client.usable:
            self._lost(worker, None)

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
        """(Re-entrant calls just ask for another round.)"""
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
        """``False`` if the core must be asked again."""
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

    async def _start(self, worker: _Worker) -> None:
        core = self._core
        try:
            client, worker.keyed = await self._starter.start(
                functools.partial(self._retire, worker),
                on_error=functools.partial(self._lost, worker),
                on_close=functools.partial(self._lost, worker, None),
            )
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

    def _fail_calls(self, calls: list[Call | Job[Call]], error: BaseException) -> None:
        for call in calls:
            if isinstance(call, Job):
                assert isinstance(call, MapJob)
                call.fail(error)  # a map: its items not cut yet
                continue
            if call.timer is not None:
                call.timer.cancel()
                call.timer = None
            if not call.done():
                call.pool = None
                call.set_exception(error)
                if self._core.cancelled:
                    call.exception()  # the pool's cancel failed it: no "never retrieved" log

    def _lost(self, worker: _Worker, exc: BaseException | None) -> None:
        """The worker cannot take calls: its connection ended (``on_close``, ``on_error``), it
        was found dead, or an abandoned call condemned it."""
        first = self._core.lost(worker)
        if first:
            client = worker.client
            if client is not None and rpc.sock(client) is not None:
                # Its client has not finished with it yet: let it do that in its own time
                # (failing what the worker was running), and make sure the socket goes.
                self._stop(worker)
        if exc is not None and worker.dead:  # not one the pool was stopping (or cancelled)
            self._report(as_reported(exc))  # as its calls report it
        if first:
            self._schedule()

    def _stop(self, worker: _Worker) -> None:
        worker.stopping = True
        client, task = worker.client, worker.task
        if client is not None:
            task = asyncio.ensure_future(self._close_client(client))
        else:
            # Still starting: abandon the start (the child sees EOF); closing waits for it.
            if task is None or task.done():
                return
            task.cancel()
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

    async def _wait_until(
        self, predicate: Callable[[PoolStatistics], bool], timeout: float | None
    ) -> PoolStatistics:
        loop = self._bind()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            stats = self._core.statistics()
            if predicate(stats):
                return stats
            fut: asyncio.Future[None] = loop.create_future()
            self._watchers.append(fut)
            try:
                await wait_for(fut, None if deadline is None else max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise not_reached(timeout, stats) from None

    async def _open(self) -> None:
        self._bind()
        try:
            await self._wait_until(opened, None)
            self._check_opened()
        except BaseException:
            await self._aclose(True, None)
            raise

    async def _aclose(self, cancel: bool, timeout: float | None) -> None:
        core = self._core
        if self._loop is None:
            core.close()
            self._finish_close()
            return
        self._bind()
        if cancel:
            self._cancel()
        if not core.closing:
            core.close()
            self._schedule()
        closed = self._closed
        assert closed is not None
        try:
            await wait_for(asyncio.shield(closed), timeout)
        except BaseException:
            self._cancel()
            with contextlib.suppress(BaseException):
                await asyncio.shield(closed)
            raise
        finally:
            self._finish_close()

    def _finish_close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._starter.close()
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None  # once, however often we get here
            on_close()

    def _cancel(self) -> None:
        calls, workers = self._core.cancel()
        self._fail_calls(calls, ClosedError("the pool was cancelled"))
        for worker in workers:
            kill(worker.pid, worker.client)
            self._stop(worker)
        self._notify()
