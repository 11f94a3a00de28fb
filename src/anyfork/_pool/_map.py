"""``map`` for every pool face: one :class:`MapJob` (a ``_core.Job``) in the pool's queue, from
which the core cuts the next call only when a worker can take one (``take``), so each call is
sized then from the time the earlier ones took (``_batching.Sizer``, as ``Client.map`` does)::

    consumer ── feed(items) ──> job ── core.schedule: take() ──> unit (1 item: a call;
       ^                                                           n items: a batch) ──> worker
       └── wait ── on_change <── answered(unit, fut, took) <── its outcome

No call is cut after a failure.  :class:`Delivery` is the consumer's side, shared by the three
faces (their generators only wait: ``await``, a condition, a deadline).
"""

from __future__ import annotations

import itertools
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sized
from typing import Any, TypeVar, cast

from .._rpc._batching import BatchResult, Sizer
from ._core import Job
from ._daemon import nap
from ._policy import positive

TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    from concurrent.futures import Future

C = TypeVar("C")
Progress = Callable[[int, "int | None"], object]


class Unit:
    """One call of a map: items ``start`` to ``start + n`` (one call, or a batch of ``n``),
    their arguments by column, and once answered their results and the failure after them."""

    __slots__ = ("call", "columns", "done", "error", "n", "results", "start")

    def __init__(self, start: int, columns: list[list[Any]]) -> None:
        self.start = start
        self.columns: list[list[Any]] | None = columns  # dropped once answered
        self.n = len(columns[0])
        self.results: list[Any] = []  # Any: the function's results
        self.error: BaseException | None = None
        self.done = False
        self.call: Any = None  # the engine's call carrying it

    def args(self) -> tuple[Any, ...]:
        """The arguments of its one item (``n == 1``)."""
        assert self.columns is not None
        return tuple([column[0] for column in self.columns])


class MapJob(Job[C]):
    """A map's items and calls.  Thread-safe: the core takes calls under the pool's lock, the
    engine reports outcomes from any thread, the consumer feeds and reads from its own.

    Args:
        make: ``make(job, unit)``: the engine's call carrying ``unit``, whose outcome the
            engine reports with :meth:`answered`.
        chunksize: items per call, or ``None``: sized from measured times.
        batchable: the serialiser carries batches (else one call per item).
        workers: the pool's most workers (for the sizer's spread of the last batches).
    """

    def __init__(
        self,
        make: Callable[[MapJob[C], Unit], C],
        *,
        chunksize: int | None,
        batchable: bool,
        workers: int,
    ) -> None:
        if chunksize is not None and not positive(chunksize):
            raise ValueError(
                f"chunksize must be >= 1 (or None: sized by the pool), not {chunksize!r}"
            )
        self._make = make
        self._lock = threading.Lock()
        self.changed = threading.Condition(self._lock)
        #: Called (from any thread, no lock held) when a call of the job is answered.
        self.on_change: Callable[[], object] | None = None
        self._columns: list[list[Any]] = []
        self._cut = 0  # the first item of _columns that no call carries
        self._base = 0  # the item number of _columns[...][0]
        self.fed = 0  # items fed so far
        self.complete = False  # every item is fed
        self.pending: deque[Unit] = deque()  # cut and not delivered, in order
        self.sizer = Sizer(workers=workers) if chunksize is None and batchable else None
        self.chunksize = (chunksize or 1) if batchable else 1
        self.failed = False  # a call failed: no more are cut
        self.closed = False
        #: The most calls cut and not delivered (``None``: as many as the items fed allow).
        self.limit: int | None = None
        #: What failed the items no call carries (the pool was cancelled or interrupted).
        self.error: BaseException | None = None

    def feed(self, columns: list[list[Any]], complete: bool) -> None:
        """Add items (by column, as long as each other, handed over; ``complete``: the last
        ones).  A ``range`` column comes alone, complete: each call carries a slice of it."""
        with self._lock:
            if columns:
                if self._columns:
                    for mine, more in zip(self._columns, columns, strict=True):
                        mine.extend(more)
                else:
                    self._columns = columns
                self.fed += len(columns[0])
            self.complete = self.complete or complete

    def size(self) -> int:
        """The size of the next call, as far as known now."""
        sizer = self.sizer
        return self.chunksize if sizer is None else sizer.size

    def _uncut(self) -> int:
        return 0 if self.closed or self.failed else self.fed - self._base - self._cut

    def queued(self) -> int:
        with self._lock:
            return self._uncut()

    def in_flight(self) -> int:
        with self._lock:
            return len(self.pending)

    def units(self, limit: int) -> int:
        with self._lock:
            uncut = self._uncut()
            if not uncut:
                return 0
            n = self._next_size(uncut)
            if self.limit is not None:
                limit = min(limit, self.limit - len(self.pending))
        return max(0, min(limit, -(-uncut // n)))

    def _next_size(self, uncut: int) -> int:
        sizer = self.sizer
        if sizer is None:
            return min(self.chunksize, uncut)
        return min(sizer.next_size(uncut if self.complete else None), uncut)

    def take(self, now: float) -> C | None:
        with self._lock:
            uncut = self._uncut()
            if not uncut or (self.limit is not None and len(self.pending) >= self.limit):
                return None
            n = self._next_size(uncut)
            cut = self._cut
            unit = Unit(self._base + cut, [column[cut : cut + n] for column in self._columns])
            self._cut = cut = cut + n
            if cut > 4096 and 2 * cut > len(self._columns[0]):
                # Forget the items already cut (amortised: each is moved at most once more).
                columns: list[Any] = self._columns  # (a range stands in for a list)
                for j, column in enumerate(columns):
                    if type(column) is range:
                        columns[j] = column[cut:]
                    else:
                        del column[:cut]
                self._base += cut
                self._cut = 0
            self.pending.append(unit)
        return self._make(self, unit)

    def answered(
        self,
        unit: Unit,
        fut: Future[Any] | asyncio.Future[Any],
        took: float | None,
        cancelled: type[BaseException],
    ) -> None:
        """``unit``'s call is over, its outcome ``fut``'s (a ``BatchResult`` for a batch, a
        one-item list for a single call: the engine holds no reference to the item itself,
        which is its consumer's once delivered; cancelled: a ``cancelled()``); ``took``: the
        seconds the worker spent on it (``None``: not known, or it did not run)."""
        error = cancelled() if fut.cancelled() else fut.exception()
        if error is not None:
            results: list[Any] = []
        elif type(outcome := fut.result()) is BatchResult:
            results, error = outcome.results, outcome.error
        else:
            results = outcome
        with self._lock:
            unit.results, unit.error, unit.done, unit.columns = results, error, True, None
            unit.call = None  # (its future holds a single call's result)
            if error is not None:
                self.failed = True
            elif took is not None and self.sizer is not None:
                self.sizer.observe(unit.n, took)
            self.changed.notify_all()
        on_change = self.on_change
        if on_change is not None:
            on_change()

    def fail(self, error: BaseException) -> None:
        """The items no call carries yet fail with ``error`` (the first of them raises it)."""
        with self._lock:
            if self.error is None:
                self.error = error
            self.failed = True
            self.changed.notify_all()
        on_change = self.on_change
        if on_change is not None:
            on_change()

    def close(self) -> list[Unit]:
        """No more calls are cut; returns the units not answered yet (the consumer withdraws
        those that have not started)."""
        with self._lock:
            self.closed = True
            self._columns = []
            return [u for u in self.pending if not u.done]


class Delivery:
    """Reads the iterables lazily, at most ``limit`` calls ahead (``None``: the caller has fed
    every item), and counts the results given.  ``requeue(job)`` puts the job back in the
    pool's queue (it leaves it when it has no items); ``withdraw(unit)`` takes back a call that
    has not started."""

    def __init__(
        self,
        job: MapJob[Any],
        iterables: tuple[Iterable[Any], ...],
        limit: int | None,
        progress: bool | Progress,
        requeue: Callable[[MapJob[Any]], object],
        withdraw: Callable[[Unit], object],
    ) -> None:
        self.job = job
        self.total = _length(iterables) if iterables else job.fed
        self._rows: Iterator[tuple[Any, ...]] | None = None
        self._single: Iterator[Any] | None = None
        self._unqueued = False  # fed whole, not queued yet (the first pump does)
        if limit is None:
            pass  # the caller has fed every item
        elif len(iterables) == 1 and type(iterables[0]) is range:
            # Fed whole: each call carries a slice of it, a range too (its ints are made in
            # the worker, not here: the parent is what a cheap map keeps busiest), and the job
            # itself keeps at most ``limit`` calls in flight.
            job.feed([iterables[0]], True)  # type: ignore[list-item]
            job.limit = limit
            self._unqueued = True
        elif len(iterables) == 1:
            self._single = iter(iterables[0])
        else:
            self._rows = iter(zip(*iterables, strict=False))  # stops with the shortest, as map()
        self._limit = limit
        self._requeue = requeue
        self._withdraw = withdraw
        self.done = 0
        self._hook, self._close_bar = _progress_hook(progress, self.total)

    def start(self) -> None:
        """Queue a job fed at once (at the map's call)."""
        if self.job.fed:
            self._requeue(self.job)

    def pump(self) -> None:
        """Read more items if fewer than ``limit`` calls are in flight (or could be cut)."""
        job = self.job
        if self._unqueued:
            self._unqueued = False
            self._requeue(job)
            return
        if self._limit is None or job.complete:
            return
        size = job.size()
        want = (self._limit - job.in_flight()) * size - job.queued()
        if want <= 0:
            return
        if self._single is not None:
            got = [list(itertools.islice(self._single, want))]
            n = len(got[0])
        else:
            assert self._rows is not None
            rows = list(itertools.islice(self._rows, want))
            n = len(rows)
            got = [list(c) for c in zip(*rows, strict=True)] if rows else []
        job.feed(got, n < want)
        if n:
            self._requeue(job)

    def next_unit(self) -> Unit | None:
        """The oldest call if it is answered (``None``: not yet); ``StopIteration`` once every
        result has been given.  With the job's lock held (``job.changed``)."""
        job = self.job
        if job.pending:
            unit = job.pending[0]
            return unit if unit.done else None
        if job.error is not None:
            raise job.error
        if job.complete and not job._uncut():
            raise StopIteration
        return None

    def delivered(self, unit: Unit) -> None:
        """``unit``'s results are taken (in order)."""
        job = self.job
        with job.changed:
            job.pending.popleft()
            capped = job.limit is not None and job._uncut() > 0
        if capped:
            self._requeue(job)  # it left the queue while it had ``limit`` calls in flight
        if unit.results:
            self.done += len(unit.results)
            self._hook(self.done, self.total)

    def close(self) -> None:
        """The map ends (done, failed, stopped): calls not started are withdrawn, those running
        finish (their results dropped)."""
        for unit in self.job.close():
            self._withdraw(unit)
        self._close_bar()


_END = object()


def draining(results: list[Any]) -> Iterator[Any]:
    """The items of ``results`` (emptied), each let go of as it is taken: a delivered result
    is its consumer's alone, as ``concurrent.futures`` promises (no Python code per item)."""
    queue = deque(results)
    results.clear()
    queue.append(_END)
    return iter(queue.popleft, _END)


def bmap(
    delivery: Delivery,
    deadline: float | None = None,
    interrupted: Callable[[], object] | None = None,
    timeout_error: type[Exception] = TimeoutError,
) -> Generator[Iterator[Any], None, None]:
    """The results of a map, an iterator per call, in order (see :class:`Results`);
    ``timeout_error`` at ``deadline`` (``time.monotonic()``); ``interrupted()`` if a wait is
    interrupted.  The failure after a call's results comes as the next step."""
    job = delivery.job
    error: BaseException | None = None
    try:
        while error is None:
            try:
                delivery.pump()
                with job.changed:
                    # Looked at and waited for under the lock the outcomes are reported under.
                    unit = delivery.next_unit()
                    if unit is None:
                        wait = None if deadline is None else deadline - time.monotonic()
                        if wait is not None and wait <= 0:
                            raise timeout_error
                        job.changed.wait(nap(wait))  # (and looks again)
                        continue
                delivery.delivered(unit)
            except StopIteration:
                return
            except Exception:
                raise
            except BaseException:  # interrupted while it waited (wherever it landed)
                if interrupted is not None:
                    interrupted()
                raise
            error, results = unit.error, draining(unit.results)
            del unit  # while the consumer takes the results, this frame holds none of them
            yield results
            del results
        raise error
    finally:
        delivery.close()


class Results(itertools.chain[Any]):
    """:func:`bmap`'s results one by one, flattened by ``itertools.chain`` in C (no Python code
    per result: a generator's ``yield from`` cost a third of a trivial map's time in the
    parent); ``close()`` stops the map, as dropping the iterator does (the generator under it
    is closed).  Make one with ``Results.of(bmap(...))``."""

    __slots__ = ("_steps",)

    _steps: Generator[Iterator[Any], None, None]

    @classmethod
    def of(cls, steps: Generator[Iterator[Any], None, None]) -> Results:
        results = cast(Results, cls.from_iterable(steps))  # (typeshed: a chain)
        results._steps = steps
        return results

    def close(self) -> None:
        """Stop the map: calls not started are withdrawn (see :meth:`Delivery.close`)."""
        self._steps.close()


_warned: list[bool] = []  # the warning about tqdm has been given


def _progress_hook(
    progress: bool | Progress, total: int | None
) -> tuple[Progress, Callable[[], object]]:
    """``(hook(done, total), close())`` for ``progress`` (``True``: a tqdm bar, if any)."""
    if callable(progress):
        return progress, lambda: None
    if progress:
        try:
            from tqdm import tqdm
        except ImportError:
            if not _warned:
                _warned.append(True)
                warnings.warn(
                    "map(progress=True) shows a tqdm bar, but tqdm is not installed: no "
                    "progress is shown (pip install tqdm, or pass progress=callable)",
                    RuntimeWarning,
                    stacklevel=4,
                )
        else:
            bar = tqdm(total=total, unit="call")
            return (lambda done, total: bar.update(done - bar.n)), bar.close
    return (lambda done, total: None), lambda: None


def _length(iterables: tuple[Iterable[Any], ...]) -> int | None:
    if all(isinstance(it, Sized) for it in iterables):
        return min(len(it) for it in iterables)  # type: ignore[arg-type]
    return None
