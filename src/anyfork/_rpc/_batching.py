"""Batches of calls, parent side: what one batch answers, and how big the next one should be.

Pure: no I/O, no clock (times are passed in), no asyncio; shared by ``Client.map``,
``BlockingClient.map`` and the pools.

A batch is one ``CALL_BATCH`` frame (``_child._rpc_wire``): N calls, their arguments by
column (``columns[j][i]`` is the ``j``-th argument of call ``i``), run in order as one call.
The sizer chooses batch sizes for cheap calls the way joblib's auto-batching does::

    sizer = Sizer(workers=2)
    n = sizer.next_size(remaining=len(todo))       # 1 at first
    ... send todo[:n] as one batch; when it answers, at time `now`:
    sizer.observe(n, service_time(sent, now, previous_answer_of_that_worker))
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["BatchResult", "Sizer", "check_columns", "columns_of", "service_time"]

#: Seconds a batch should take: long enough that the per-frame cost (two frames, a few
#: syscalls and loop wake-ups, ~0.1 ms) is lost in it, short enough that progress is reported
#: often and the last batches of a map end close together.  A batch's time is measured in the
#: parent, so it includes the parent's delays (its consumer taking the results of the batch
#: before, another thread holding the GIL): with cheap calls on a busy machine, 32,768 items
#: measured 30 to 90 ms, which a 30 ms target shrank (a third fewer calls per second).
TARGET = 0.1
#: The most a size may grow from a measurement of a batch of ``n`` items: ``n * GROWTH``.
#: Small batches are dominated by the per-frame cost, so their time per item is an
#: overestimate; growth by steps keeps an early noisy measurement from overshooting.
GROWTH = 8
#: The largest batch: a bound on one frame's memory when calls cost nothing measurable.
MAX_SIZE = 1 << 16
#: Batches a map keeps in flight per worker: the next ones are encoded and sent while one
#: runs, so that the worker never waits for the parent.
WINDOW = 4


class BatchResult:
    """The outcome of a batch that the worker answered (as a ``concurrent.futures`` chunk's).

    Attributes:
        results: the results of the items that ran, in order: all of them, or those before
            the item that failed.
        error: ``None``, or the exception of item ``len(results)`` (its own type, with the
            worker's traceback as its ``__cause__``, as for a single call).  If that item
            raised, the items after it were not run; if its result could not be serialised
            (an ``EncodeError``, side ``"child"``), they were, and their results are lost.
    """

    __slots__ = ("error", "results")

    def __init__(self, results: list[Any], error: BaseException | None = None) -> None:
        self.results = results  # Any: whatever the function returns
        self.error = error

    @property
    def failed_at(self) -> int | None:
        return None if self.error is None else len(self.results)

    def __repr__(self) -> str:
        if self.error is None:
            return f"<BatchResult {len(self.results)} results>"
        return f"<BatchResult {len(self.results)} results, then {type(self.error).__name__}>"


def columns_of(iterables: Sequence[Iterable[Any]]) -> list[list[Any]]:
    """The arguments of ``map(func, *iterables)`` by column, cut to the shortest as ``zip``
    does.  A lone ``range`` stays one (see :func:`check_columns`)."""
    if len(iterables) == 1:
        only = iterables[0]
        return [only if type(only) is range else list(only)]  # type: ignore[list-item]
    rows = list(zip(*iterables, strict=False))
    if not rows:
        return [[] for _ in iterables]
    return [list(column) for column in zip(*rows, strict=True)]


def check_columns(columns: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """``columns`` as lists, uncopied if they are; ``ValueError`` unless there is at least one
    and all are as long.

    A ``range`` stays one: pickle carries its slices in a few bytes and the worker makes the
    ints, so the parent, which a cheap map keeps busiest, neither makes nor pickles them."""
    if not columns:
        raise ValueError("a batch needs at least one column of arguments")
    out: list[Any] = [c if type(c) is list or type(c) is range else list(c) for c in columns]
    n = len(out[0])
    if any(len(c) != n for c in out):
        lengths = sorted({len(c) for c in out})
        raise ValueError(f"a batch's columns of arguments are all as long, not {lengths}")
    return out


def service_time(sent: float, answered: float, previous: float | None) -> float:
    """How long a worker spent on a batch sent at ``sent``, answered at ``answered``, its
    previous batch answered at ``previous``: it started when both had happened, so time queued
    behind earlier batches does not count (a full pipeline does not make items look slower)."""
    start = sent if previous is None or previous < sent else previous
    return max(0.0, answered - start)


class Sizer:
    """Chooses the size of the next batch from how long batches took (see the module docs).

    Sizes start at 1.  A batch of ``n`` items that took ``d`` seconds says ``ideal = target *
    n / d`` items would take ``target`` (an item's cost, ``d / n``, is overestimated for small
    ``n``, where the per-frame cost dominates).  Under ``target / 2`` the size grows to
    ``ideal``, at most ``GROWTH * n``, and never shrinks (an older, smaller batch cannot pull it
    down); over ``2 * target`` it shrinks to ``ideal`` (at least 1); in between it stays (no
    oscillation).  ``next_size(remaining)`` keeps at least ``2 * workers`` batches for what is
    left, so that the last ones spread over the workers and end close together.

    Args:
        target: seconds a batch should take (positive).
        workers: workers the batches go to (for the bound on the last batches).
        max_size: the largest size.

    Raises:
        ValueError: a target, worker count or size that is not positive.
    """

    __slots__ = ("max_size", "size", "target", "workers")

    def __init__(self, target: float = TARGET, workers: int = 1, max_size: int = MAX_SIZE):
        if not target > 0 or math.isinf(target):
            raise ValueError(f"target is a positive number of seconds, not {target!r}")
        if workers < 1:
            raise ValueError(f"workers is a positive int, not {workers!r}")
        if max_size < 1:
            raise ValueError(f"max_size is a positive int, not {max_size!r}")
        self.target = target
        self.workers = workers
        self.max_size = max_size
        self.size = 1

    def next_size(self, remaining: int | None = None) -> int:
        size = self.size
        if remaining is not None:
            spread = -(-remaining // (2 * self.workers))  # ceil
            if spread < size:
                size = max(1, spread)
        return size

    def observe(self, items: int, duration: float) -> None:
        """A batch of ``items`` items took ``duration`` seconds (``service_time``)."""
        if items < 1:
            raise ValueError(f"a batch has at least one item, not {items!r}")
        if math.isnan(duration):
            raise ValueError("a batch's duration is a number, not NaN")
        target = self.target
        if duration < target / 2:
            # Faster than a clock can tell (0): as fast as growth allows.
            ideal = items * GROWTH if duration <= 0 else target * items / duration
            grown = min(ideal, items * GROWTH, self.max_size)
            if grown > self.size:
                self.size = int(grown)
        elif duration > 2 * target:
            shrunk = int(target * items / duration)
            if shrunk < self.size:
                self.size = max(1, shrunk)
