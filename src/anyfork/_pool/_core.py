"""The pool's core: its workers, queue, totals and statistics, and what the policy's actions do
to them.  No I/O: no sockets, no clocks, no threads, no asyncio (time comes in as ``now``, a
worker's memory through the engine's ``measure``).  Both engines hold one, tell it what
happened, and carry out the effects :meth:`PoolCore.schedule` returns::

    engine ── submit / withdraw / requeue ──────────> queue ──┐
           ── started / start_failed / finished ───> workers ─┼─> _policy.decide(now, view)
           ── retire / lost / close / cancel ──────> totals  ──┘          │
    engine <── Send(worker, call)   give the call to the worker  <───────┘ (bookkeeping done)
           <── Launch(worker)       start it (fork from the template, start its RPC server)
           <── Halt(worker)         stop it (it has no calls): close its client
           <── Wake(at)             call schedule() again at ``at``
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from .._errors import also_anyfork
from . import _policy
from ._policy import positive
from ._records import PoolStatistics, Totals, Worker

W = TypeVar("W", bound=Worker)
C = TypeVar("C")


@dataclass(slots=True)
class Send(Generic[W, C]):
    worker: W
    call: C


@dataclass(slots=True)
class Launch(Generic[W]):
    worker: W


@dataclass(slots=True)
class Halt(Generic[W]):
    worker: W


Effect = Send[W, C] | Launch[W] | Halt[W] | _policy.Wake


class Job(Generic[C]):
    """Many calls queued as one entry (a ``map``: ``_map.MapJob``), counted as the calls it could
    still give, and cut into calls only as workers take them."""

    def units(self, limit: int) -> int:
        """How many calls it could give now (at most ``limit``; at least 1 while it has
        items to give)."""
        raise NotImplementedError

    def take(self, now: float) -> C | None:
        """Cut the next call (``None``: nothing left to give now)."""
        raise NotImplementedError

    def queued(self) -> int:
        """The items it holds that no call carries yet (for the statistics)."""
        raise NotImplementedError


class PoolCore(Generic[W, C]):
    """``new_worker(id, now)`` makes the engine's worker record; ``measure(pid)`` reads a
    worker's resident memory (for ``max_memory``).  Not thread-safe: see ``Engine._lock``."""

    def __init__(
        self,
        settings: _policy.Settings,
        *,
        max_calls: int | None,
        max_memory: int | None,
        new_worker: Callable[[int, float], W],
        measure: Callable[[int], int | None],
    ) -> None:
        for name, value, what in (
            ("max_calls", max_calls, "an int >= 1"),
            ("max_memory", max_memory, "a number of bytes >= 1"),
        ):
            if value is not None and not positive(value):
                raise ValueError(f"{name} is None or {what}, not {value!r}")
        self.settings = settings
        self.max_calls = max_calls
        self.max_memory = max_memory
        self._new_worker = new_worker
        self._measure = measure
        self.workers: dict[int, W] = {}
        #: Calls and jobs, in order (a job leaves once it has nothing left to give).
        self.queue: deque[C | Job[C]] = deque()
        self._jobs: list[Job[C]] = []  # those in the queue
        self.totals = Totals()
        self.closing = False
        self.cancelled = False
        #: The last start-up failure (dual-typed: its own type and ``AnyforkError``).
        self.start_error: BaseException | None = None
        self._start_failed = False
        self._next_id = 0
        self._last_start: float | None = None
        self._last_stop: float | None = None

    def submit(self, call: C) -> None:
        self.queue.append(call)

    def submit_job(self, job: Job[C]) -> None:
        """Queue a job (last), unless it is queued already."""
        if job not in self._jobs:
            self._jobs.append(job)
            self.queue.append(job)

    def withdraw(self, call: C | Job[C]) -> bool:
        """``False`` if it was not queued."""
        try:
            self.queue.remove(call)
        except ValueError:
            return False
        if isinstance(call, Job):
            self._jobs.remove(call)
        return True

    def _take(self, now: float) -> C | None:
        """The next call to give a worker: the oldest, or cut from the oldest job."""
        queue = self.queue
        while queue:
            first = queue[0]
            if not isinstance(first, Job):
                queue.popleft()
                return first
            call = first.take(now)
            if call is not None and first.units(1):
                return call
            queue.popleft()  # it has nothing more to give now
            self._jobs.remove(first)
            if call is not None:
                return call
        return None

    def _queued(self, limit: int) -> int:
        """Calls queued, a job counting as the calls it could give (capped at ``limit``); a job
        with none to give leaves the queue (its map is waiting for items, done or closed)."""
        jobs = self._jobs
        count = len(self.queue) - len(jobs)
        for job in list(jobs):
            units = job.units(limit)
            if units:
                count += units
            else:
                self.withdraw(job)
        return count

    def requeue(self, calls: list[C]) -> list[C]:
        """Queue calls given to a worker found dead before they were sent again, first, in
        order (never lost).  Returns those it cannot (the pool is cancelled): the engine fails
        them."""
        if self.cancelled:
            return calls
        self.queue.extendleft(reversed(calls))
        return []

    def schedule(self, now: float) -> list[Effect[W, C]]:
        """Ask the policy, do the bookkeeping; what the engine must carry out, in order."""
        if self.cancelled:
            return []
        s = self.settings
        view = _policy.PoolView(
            workers=[
                _policy.WorkerView(w.id, w.load, w.ready, w.retiring, w.idle_since)
                for w in self.workers.values()
            ],
            queued=self._queued(s.max * s.load + 1) if self._jobs else len(self.queue),
            last_start=self._last_start,
            last_stop=self._last_stop,
            closing=self.closing,
            start_failed=self._start_failed,
        )
        effects: list[Effect[W, C]] = []
        for action in _policy.decide(now, view, self.settings):
            if isinstance(action, _policy.Dispatch):
                call = self._take(now)
                if call is None:
                    continue  # a job gave fewer calls than it said it could
                worker = self.workers[action.worker]
                worker.load += 1
                worker.dispatched += 1
                if self.max_calls is not None and worker.dispatched >= self.max_calls:
                    worker.retiring = True
                effects.append(Send(worker, call))
            elif isinstance(action, _policy.Start):
                self._next_id += 1
                worker = self._new_worker(self._next_id, now)
                self.workers[worker.id] = worker
                self._last_start = now
                effects.append(Launch(worker))
            elif isinstance(action, _policy.Stop):
                worker = self.workers.pop(action.worker)
                if action.why == "idle":
                    self._last_stop = now
                elif action.why == "retired":
                    self.totals.retired += 1
                worker.stopping = True
                effects.append(Halt(worker))
            else:
                effects.append(action)
        return effects

    def started(self, worker: W, pid: int | None, now: float) -> bool:
        """``worker`` is ready; ``False`` if the pool dropped it meanwhile (the engine then
        closes it)."""
        if self.workers.get(worker.id) is not worker or self.cancelled:
            return False
        worker.pid = pid
        worker.ready = True
        worker.idle_since = now
        self.totals.started += 1
        self._start_failed = False
        return True

    def start_failed(self, worker: W, exc: BaseException) -> tuple[BaseException, list[C | Job[C]]]:
        """The error to report (also an ``AnyforkError``, as ``rpc()``'s), and the queued calls
        to fail with it: all of them when no worker is left to serve them, else none."""
        error = also_anyfork(exc) if isinstance(exc, Exception) else exc
        self.forget(worker)
        self.totals.failed_starts += 1
        self._start_failed = True
        self.start_error = error
        return error, [] if self.workers else self._take_queue()

    def forget(self, worker: W) -> None:
        """A starting ``worker`` was abandoned (the pool is closing the fast way)."""
        if self.workers.get(worker.id) is worker:
            del self.workers[worker.id]

    def finished(self, worker: W, now: float, *, completed: bool, items: int = 1) -> None:
        """``completed``: it ran to its end in the worker (not skipped, abandoned, nor its worker
        dead); ``items``: the calls a batch carried."""
        if completed:
            self.totals.calls += items
        if worker.dead or worker.stopping:
            return
        worker.load -= 1
        if worker.load == 0:
            worker.idle_since = now
        if self.max_memory is not None and worker.pid is not None and not worker.retiring:
            size = self._measure(worker.pid)
            if size is not None and size > self.max_memory:
                worker.retiring = True

    def retire_keyless(self) -> None:
        """Workers started without the parent's authkey (a Manager appeared since: its proxies
        would be refused there) are replaced as they finish their calls."""
        for worker in self.workers.values():
            if not worker.keyed:
                worker.retiring = True

    def retire(self, worker: W) -> bool:
        """It gets no new calls; ``True`` if that is news."""
        news, worker.retiring = not worker.retiring, True
        return news

    def lost(self, worker: W) -> bool:
        """``worker`` died, or was condemned: it leaves the rotation at once, so no later call
        is given to it (counted as died).  ``True`` the first time, unless it was stopping."""
        if worker.dead or worker.stopping:
            return False
        worker.dead = True
        if self.workers.get(worker.id) is worker:
            del self.workers[worker.id]
            self.totals.died += 1
        return True

    def close(self) -> None:
        self.closing = True

    def cancel(self) -> tuple[list[C | Job[C]], list[W]]:
        """The queued calls and jobs (to fail) and every worker (to kill); nothing is scheduled
        any more."""
        self.closing = self.cancelled = True
        workers = list(self.workers.values())
        self.workers.clear()
        for worker in workers:
            worker.stopping = True
        return self._take_queue(), workers

    def _take_queue(self) -> list[C | Job[C]]:
        """Empty the queue; what it held."""
        calls = list(self.queue)
        self.queue.clear()
        self._jobs.clear()
        return calls

    @property
    def drained(self) -> bool:
        """Closing, with no worker and no queued call left."""
        return self.closing and not self.workers and not self.queue

    def statistics(self) -> PoolStatistics:
        ws = list(self.workers.values())
        ready = [w for w in ws if w.ready]
        t = self.totals
        return PoolStatistics(
            workers=len(ws),
            starting=len(ws) - len(ready),
            idle=sum(1 for w in ready if w.load == 0 and not w.retiring),
            busy=sum(1 for w in ready if w.load),
            queued=len(self.queue) - len(self._jobs) + sum(j.queued() for j in self._jobs),
            started=t.started,
            died=t.died,
            retired=t.retired,
            calls=t.calls,
            failed_starts=t.failed_starts,
        )

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self.workers.values() if w.ready and w.pid is not None]
