"""The pool's policy driven by threads: the engine of ``PoolExecutor``.

``anyfork.Pool`` drives ``_policy.decide`` from an event loop.  An executor's callers are
threads, and routing each call through a loop thread costs two thread handoffs per call, more
than the call itself (measured: 145 us through the loop against 17 us for a blocking RPC round
trip).  So this driver gives every worker a thread of its own, holding a ``BlockingClient``::

    submit() ──> queue ──(Dispatch w)──> w's inbox ──> w's thread: client(*args) ──> future
    decide()  ── Start ──> a new worker thread: template.fork().rpc_blocking(func), then serve
              ── Stop w ─> w's thread closes its client and ends
              ── Wake t ─> a timer calls decide() again at t

One lock guards every record; each worker thread waits on its own condition of that lock.
Semantics are the Pool's (see its docstring): least-loaded dispatch below ``load`` (a worker's
thread runs its inbox one call after another), pacing, ``retire()``, ``max_calls``,
``max_memory``; a worker that dies fails only the call it was running and is replaced; a call
taken by a worker found dead before it was sent is queued again.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import queue
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .._core._process import Process
from .._errors import AnyforkError, SpawnError, WorkerDiedError
from .._rpc._blocking import BlockingClient
from . import _policy
from ._records import (
    _RETIRE_MARKS,
    PoolStatistics,
    PoolTemplate,
    Totals,
    WorkerState,
    check_recycling,
    policy_view,
    rss,
    settings,
    snapshot,
    worker_options,
)


class _Call:
    __slots__ = ("args", "claimed", "fut", "kwargs", "worker")

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]):
        self.args = args
        self.kwargs = kwargs
        self.fut: _Future = _Future(self)
        self.worker: _Worker | None = None  # set when a worker is given the call
        self.claimed = False  # someone runs it: that worker's thread, or a waiting caller


class _Future(cf.Future[Any]):
    """The executor's future: a caller that waits for it may run the call itself.

    A call given to a worker normally waits in that worker's inbox until its thread wakes and
    runs it: a thread handoff each way, more than the call itself.  A caller blocked in
    ``result()`` has nothing better to do, so it claims the call and runs it on the worker's
    own (thread-safe) client; whoever claims first, the caller or the worker's thread, runs it,
    once.  Callbacks, ``wait`` and ``as_completed`` see no difference.
    """

    def __init__(self, call: _Call) -> None:
        super().__init__()
        self._call = call
        self._pool: ThreadedPool | None = None

    def result(self, timeout: float | None = None) -> Any:
        pool = self._pool
        # With a timeout the caller must be free to stop waiting, so it does not run the call.
        if timeout is None and pool is not None and not self.done():
            pool._help(self._call)
        return super().result(timeout)


class _Worker(WorkerState):
    __slots__ = ("client", "inbox")

    def __init__(self, wid: int, now: float) -> None:
        super().__init__(wid, now)
        self.client: BlockingClient | None = None
        # Calls given to this worker, and None to stop it.  A C queue: its get() blocks without
        # the pool's lock and wakes the thread at the cost of a futex, not a Python Condition.
        self.inbox: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()


class ThreadedPool:
    """A pool whose calls go from the calling thread to a worker's own thread and back."""

    def __init__(
        self,
        template: Process | None,
        func: str,
        *,
        max: int | None = None,
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
        self._func = func
        self._templates = PoolTemplate(template, func)
        self._max_calls = max_calls
        self._max_memory = max_memory
        self._on_error = on_error
        self._on_close = on_close
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # for close() and statistics waiters
        self._workers: dict[int, _Worker] = {}
        self._threads: set[threading.Thread] = set()
        self._queue: deque[_Call] = deque()
        #: Every call submitted and not finished: what shutdown(cancel_futures=True) cancels
        #: (cancel() succeeds only on those no worker has started).
        self._outstanding: set[_Call] = set()
        self._next_id = 0
        self._last_start: float | None = None
        self._last_stop: float | None = None
        self._start_failed = False
        self._closing = False
        self._closed = False
        # One clock thread for the policy's Wake times (pacing, idle stops), started on the
        # first one: the wake time moves with every call that leaves a worker idle, so a timer
        # per Wake would be a thread per call.
        self._clock = threading.Condition(self._lock)
        self._clock_thread: threading.Thread | None = None
        self._wake_at: float | None = None
        self._totals = Totals()
        # Workers start with the first call (as ProcessPoolExecutor's do), not here.

    # -- calls --------------------------------------------------------------------------------

    def submit(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> cf.Future[Any]:
        call = _Call(args, kwargs)
        fut = call.fut
        fut._pool = self
        with self._lock:
            if self._closing:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._queue.append(call)
            self._outstanding.add(call)
            self._schedule()
        fut.add_done_callback(functools.partial(self._settled, call))
        return fut

    def _settled(self, call: _Call, fut: cf.Future[Any]) -> None:
        with self._lock:
            self._outstanding.discard(call)
        if fut.cancelled():
            self._withdraw(call)

    def _withdraw(self, call: _Call) -> None:
        """A cancelled future: out of the queue if it is there (a worker that already has it
        skips it), and ``wait``/``as_completed`` are told now, wherever it was."""
        with self._lock, contextlib.suppress(ValueError):
            self._queue.remove(call)
            self._changed.notify_all()
        _notify_cancelled(call.fut)

    # -- the policy ---------------------------------------------------------------------------

    def _schedule(self) -> None:
        """Ask the policy what to do and do it.  Called with the lock held."""
        now = time.monotonic()
        view = policy_view(
            self._workers.values(),
            len(self._queue),
            self._last_start,
            self._last_stop,
            self._closing,
            self._start_failed,
        )
        for action in _policy.decide(now, view, self._settings):
            if isinstance(action, _policy.Dispatch):
                worker = self._workers[action.worker]
                call = self._queue.popleft()
                worker.load += 1
                worker.dispatched += 1
                if self._max_calls is not None and worker.dispatched >= self._max_calls:
                    worker.retiring = True
                call.worker = worker
                worker.inbox.put(call)
            elif isinstance(action, _policy.Start):
                self._next_id += 1
                worker = _Worker(self._next_id, now)
                self._workers[worker.id] = worker
                self._last_start = now
                thread = threading.Thread(
                    target=self._serve, args=(worker,), name=f"anyfork-pool-worker-{worker.id}"
                )
                self._threads.add(thread)
                thread.start()
            elif isinstance(action, _policy.Stop):
                worker = self._workers.pop(action.worker)
                if action.why == "idle":
                    self._last_stop = now
                elif action.why == "retired":
                    self._totals.retired += 1
                worker.stopping = True
                worker.inbox.put(None)
            else:
                # An earlier wake than needed only makes the policy look again: keep the
                # earliest.
                if self._wake_at is None or action.at < self._wake_at:
                    self._wake_at = action.at
                    self._clock.notify()
                if self._clock_thread is None:
                    self._clock_thread = threading.Thread(
                        target=self._tick, name="anyfork-pool-clock", daemon=True
                    )
                    self._clock_thread.start()
        self._changed.notify_all()

    def _tick(self) -> None:
        with self._lock:
            while not self._closed:
                at = self._wake_at
                if at is None:
                    self._clock.wait()
                    continue
                delay = at - time.monotonic()
                if delay > 0:
                    self._clock.wait(delay)
                    continue
                self._wake_at = None
                self._schedule()

    # -- a worker's thread --------------------------------------------------------------------

    def _serve(self, worker: _Worker) -> None:
        try:
            client = self._spawn(worker)
        except BaseException as exc:
            with self._lock:
                self._workers.pop(worker.id, None)
                self._totals.failed_starts += 1
                self._start_failed = True
                if not self._workers:
                    self._fail_queue(exc)  # nobody can serve it: fail it rather than hang
                self._schedule()
            self._report(exc)
            self._thread_done()
            return
        with self._lock:
            worker.client, worker.pid = client, client.pid
            worker.ready = True
            worker.idle_since = time.monotonic()
            self._totals.started += 1
            self._start_failed = False
            self._schedule()
        while not worker.dead:
            call = worker.inbox.get()
            if call is None:
                break
            if self._claim(worker, call):
                self._execute(worker, call)
        if not worker.dead:
            with contextlib.suppress(AnyforkError, OSError, TimeoutError):
                client.close(timeout=30.0)
        self._thread_done()

    def _claim(self, worker: _Worker, call: _Call) -> bool:
        """For ``worker``'s thread: take a call from its inbox, unless a waiting caller has
        claimed it, or the call has moved on.  (A caller that found this worker dead queues the
        call again, unclaimed, while this thread may already hold it: this thread must not run
        it then, nor claim it away from the worker it goes to next.)"""
        with self._lock:
            if call.claimed or call.worker is not worker:
                return False
            call.claimed = True
            return True

    def _help(self, call: _Call) -> None:
        """A caller waiting in ``result()``: run the call now if a worker has it and nobody has
        started it (see ``_Future``)."""
        with self._lock:
            worker = call.worker
            if worker is None or worker.dead or call.claimed or worker.client is None:
                return
            if threading.current_thread().name.startswith("anyfork-pool"):
                return  # one of ours (a callback that waits): leave the call to its worker
            call.claimed = True
        self._execute(worker, call)

    def _execute(self, worker: _Worker, call: _Call) -> None:
        """Run a claimed call on ``worker`` (in its thread, or in a waiting caller's)."""
        client = worker.client
        assert client is not None
        if _gone(client):
            # It died while idle: the call never ran, so it is queued again, not lost.
            died = WorkerDiedError("the worker died while idle", client.pid, None)
            self._lost(worker, died, unstarted=call)
            return
        if not _run_or_skip(call.fut):
            self._finished(worker, completed=False)
            return
        try:
            result = client._call(call.args, call.kwargs, None)
        except WorkerDiedError as exc:
            call.fut.set_exception(exc)
            self._lost(worker, exc)
            return
        except BaseException as exc:
            call.fut.set_exception(exc)
        else:
            call.fut.set_result(result)
        self._finished(worker)

    def _lost(self, worker: _Worker, died: WorkerDiedError, unstarted: _Call | None = None) -> None:
        """The worker died: it leaves the pool once; the calls it had not started (those still
        in its inbox, and ``unstarted``, claimed but found undeliverable) are queued again, each
        once; its thread (perhaps waiting for its next call) ends."""
        with self._lock:
            # The claimed call may still sit in the inbox too (a waiting caller claimed it
            # there): it is queued once, here.
            left = [c for c in _drain(worker.inbox) if not c.claimed]
            if unstarted is not None:
                left.insert(0, unstarted)
            for c in left:
                c.worker = None
                c.claimed = False
            self._queue.extendleft(reversed(left))
            worker.inbox.put(None)  # after every drain: it may have taken an earlier one
            if worker.dead:
                self._schedule()
                return
            worker.dead = True
            if self._workers.pop(worker.id, None) is not None:
                self._totals.died += 1
            self._schedule()
        if worker.client is not None:
            worker.client.abort()
        self._report(died)

    def _spawn(self, worker: _Worker) -> BlockingClient:
        def on_event(*args: Any) -> None:
            if len(args) == 1 and args[0] in _RETIRE_MARKS:
                with self._lock:
                    worker.retiring = True  # acted on when its call completes
            elif self._user_on_event is not None:
                self._user_on_event(*args)

        for attempt in (1, 2):
            tmpl = self._templates.get()
            try:
                return tmpl.fork().rpc_blocking(self._func, on_event=on_event, **self._rpc_options)
            except SpawnError:
                if not self._templates.retry_after(tmpl, attempt):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _finished(self, worker: _Worker, completed: bool = True) -> None:
        with self._lock:
            if completed:
                self._totals.calls += 1
            worker.load -= 1
            if worker.load == 0:
                worker.idle_since = time.monotonic()
            if self._max_memory is not None and worker.pid is not None and not worker.retiring:
                size = rss(worker.pid)
                if size is not None and size > self._max_memory:
                    worker.retiring = True
            self._schedule()

    def _fail_queue(self, cause: BaseException) -> None:
        queue, self._queue = self._queue, deque()
        for call in queue:
            if _run_or_skip(call.fut):
                err = SpawnError(
                    f"no pool worker could be started: {type(cause).__name__}: {cause}"
                )
                err.__cause__ = cause
                call.fut.set_exception(err)

    def _thread_done(self) -> None:
        with self._lock:
            self._changed.notify_all()

    def _report(self, exc: BaseException) -> None:
        if self._on_error is not None:
            with contextlib.suppress(Exception):
                self._on_error(exc)

    # -- introspection and closing ------------------------------------------------------------

    def statistics(self) -> PoolStatistics:
        with self._lock:
            return snapshot(self._workers.values(), len(self._queue), self._totals)

    def worker_pids(self) -> list[int]:
        """The pids of the ready workers, oldest first."""
        with self._lock:
            return [w.pid for w in self._workers.values() if w.ready and w.pid is not None]

    def cancel_pending(self) -> None:
        """Cancel every call no worker has started (``shutdown(cancel_futures=True)``)."""
        with self._lock:
            pending = list(self._outstanding)
        for call in pending:
            call.fut.cancel()  # queued ones withdraw themselves; inbox ones are skipped

    def close(self, *, wait: bool = True) -> None:
        """No new calls; the queue is still served.  ``wait``: return once every worker thread
        has finished (their processes have exited) and the template is closed; otherwise a
        thread finishes that in the background."""
        with self._lock:
            self._closing = True
            self._schedule()
        if not wait:
            threading.Thread(target=self._finish, name="anyfork-pool-close", daemon=True).start()
            return
        self._finish()

    def _finish(self) -> None:
        # Join every worker thread, including any a closing pool starts to serve its queue.
        while True:
            with self._lock:
                threads = list(self._threads)
            if not threads:
                break
            for thread in threads:
                thread.join()
            with self._lock:
                self._threads.difference_update(threads)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._clock.notify()
            clock = self._clock_thread
        if clock is not None:
            clock.join()
        self._templates.close()
        if self._on_close is not None:
            self._on_close()


# A concurrent.futures.Future goes PENDING -> RUNNING, or CANCELLED -> CANCELLED_AND_NOTIFIED,
# through set_running_or_notify_cancel(), which raises if called twice.  A cancel() from any
# thread can race a worker taking the call, so both transitions are made under the future's own
# (reentrant) lock, reading its state, as the stdlib executors' internals do.


def _run_or_skip(fut: cf.Future[Any]) -> bool:
    """Mark the future running (``True``), or notify its cancellation once (``False``)."""
    with fut._condition:  # private, see above
        if fut._state == "PENDING":
            return fut.set_running_or_notify_cancel()
        _notify_cancelled(fut)
        return False


def _notify_cancelled(fut: cf.Future[Any]) -> None:
    with fut._condition:
        if fut._state == "CANCELLED":
            fut.set_running_or_notify_cancel()


def _drain(inbox: queue.SimpleQueue[_Call | None]) -> list[_Call]:
    calls: list[_Call] = []
    while True:
        try:
            call = inbox.get_nowait()
        except queue.Empty:
            return calls
        if call is not None:
            calls.append(call)


def _gone(client: BlockingClient) -> bool:
    """Did the worker die while idle?  Its socket is readable only then (EOF), since an idle
    worker sends nothing unasked.

    Looked at under the client's lock, which a call holds from its request to its reply: a
    call another thread has in flight on this worker (a waiting caller's, next to the
    worker's thread) makes the socket readable too, with its reply, and taking that for a
    death aborted the client under it (seen under CPU load)."""
    with client._lock:
        sock = client._sock
        if sock is None:
            return True
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))
