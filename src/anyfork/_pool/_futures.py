"""The threads engine's calls, workers and futures.  A finished call keeps nothing of its
caller's (its arguments are dropped once it has run, its future lets go of it once settled): a
dropped future is freed at once with its result, no cycle left for the collector."""

from __future__ import annotations

import concurrent.futures as cf
import queue
import time
from typing import Any

from .._rpc import _for_pools as rpc
from ._daemon import nap
from ._records import Worker

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from .._rpc._blocking import BlockingClient
    from ._map import MapJob, Unit
    from ._threads import ThreadsEngine


class ThreadWorker(Worker):
    __slots__ = ("client", "fd", "inbox")

    def __init__(self, wid: int, now: float) -> None:
        super().__init__(wid, now)
        self.client: BlockingClient | None = None
        self.fd = -1  # its client's socket, while the watcher watches it
        # Calls given to this worker, and None to stop it.  A C queue: its get() blocks without
        # the pool's lock and wakes the thread at the cost of a futex, not a Python Condition.
        self.inbox: queue.SimpleQueue[Call | None] = queue.SimpleQueue()


class Call:
    __slots__ = (
        "args",
        "claimed",
        "deadline",
        "fut",
        "job",
        "kwargs",
        "on_event",
        "timeout",
        "took",
        "unit",
        "worker",
    )

    def __init__(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        helper: ThreadsEngine,
        timeout: float | None,
        on_event: Callable[..., object] | None = None,
    ) -> None:
        self.args: tuple[Any, ...] = args
        self.kwargs: dict[str, Any] = kwargs
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.on_event = on_event
        self.fut = Future(self, helper)
        self.worker: ThreadWorker | None = None  # the worker given the call
        self.claimed = False  # someone runs it: that worker's thread, or a waiting caller
        self.job: MapJob[Call] | None = None
        self.unit: Unit | None = None
        self.took: float | None = None  # seconds the worker spent on it (a map's calls)


class Future(cf.Future[Any]):
    """To users a plain ``concurrent.futures.Future``, whose waiting caller may run the call.

    A call in a worker's inbox waits for that worker's thread: a thread handoff each way, more
    than the call itself.  A caller blocked in ``result()`` has nothing better to do, so it
    claims the call and runs it on the worker's (thread-safe) client; whoever claims first, the
    caller or the worker's thread, runs it, once.  A ``KeyboardInterrupt`` in ``result()``
    interrupts the pool."""

    def __init__(self, call: Call, helper: ThreadsEngine) -> None:
        super().__init__()
        self._call: Call | None = call
        self._helper = helper

    def result(self, timeout: float | None = None) -> Any:
        try:
            # With a timeout the caller must be free to stop waiting: it does not run the call.
            call = self._call
            if timeout is None and call is not None and not self.done():
                self._helper.help_with(call)
            return result_of(self, timeout)
        except Exception:
            raise
        except BaseException:
            self._helper.interrupt()
            raise


# A concurrent.futures.Future goes PENDING -> RUNNING, or CANCELLED -> CANCELLED_AND_NOTIFIED,
# through set_running_or_notify_cancel(), which raises if called twice.  A cancel() from any
# thread can race a worker taking the call, so both transitions are made under the future's own
# (reentrant) lock, reading its state, as the stdlib executors' internals do.


def run_or_skip(fut: cf.Future[Any]) -> bool:
    """Running (``True``), or its cancellation notified once (``False``)."""
    with fut._condition:  # private, see above
        if fut._state == "PENDING":
            return fut.set_running_or_notify_cancel()
        notify_cancelled(fut)
        return False


def notify_cancelled(fut: cf.Future[Any]) -> None:
    """``wait``/``as_completed`` learn that a cancelled future is done (once)."""
    with fut._condition:
        if fut._state == "CANCELLED":
            fut.set_running_or_notify_cancel()


def fail(calls: list[Any], error: BaseException) -> None:
    """Fail calls (and maps' jobs) that never reached a worker (without the pool's lock:
    callbacks run)."""
    for call in calls:
        if not isinstance(call, Call):
            call.fail(error)  # a map's job: its items not cut yet
        elif run_or_skip(call.fut):
            call.fut.set_exception(error)


def settles(fut: cf.Future[Any], deadline: float) -> bool:
    """``False`` if ``fut`` is not done by ``deadline``."""
    try:
        fut.exception(remaining(deadline))  # the call's own error is not raised here
    except cf.TimeoutError:
        return False
    except cf.CancelledError:
        pass
    return True


def invoke(client: BlockingClient, call: Call) -> Any:
    """Run ``call`` on ``client`` (its lock held); a map's call is timed (for its sizes), one
    item answered as a one-item list.  ``TimeoutError``, unsent, past its deadline."""
    if call.deadline is not None and time.monotonic() >= call.deadline:
        raise TimeoutError
    unit = call.unit
    if unit is None:
        return rpc.call(client, call.args, call.kwargs, remaining(call.deadline), call.on_event)
    start = time.monotonic()
    if unit.n == 1:
        result: Any = [rpc.call(client, unit.args(), {}, remaining(call.deadline))]
    else:
        assert unit.columns is not None
        result = rpc.call_batch(client, unit.columns, remaining(call.deadline))
    call.took = time.monotonic() - start
    return result


def result_of(fut: cf.Future[Any], timeout: float | None) -> Any:
    """``cf.Future.result(fut, timeout)`` in naps (``_daemon.nap``)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            return cf.Future.result(fut, nap(remaining(deadline)))
        except cf.TimeoutError:
            # (A TimeoutError the call itself ended with is the future's outcome: raised.)
            if fut.done() or (deadline is not None and time.monotonic() >= deadline):
                raise


def remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (``time.monotonic()``, or ``None``), at least 0."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def drain(inbox: queue.SimpleQueue[Call | None]) -> list[Call]:
    """Every call in a worker's inbox (the stop marks go too)."""
    calls: list[Call] = []
    while True:
        try:
            call = inbox.get_nowait()
        except queue.Empty:
            return calls
        if call is not None:
            calls.append(call)
