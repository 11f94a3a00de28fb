"""Batches of calls (``CALL_BATCH``, ``_child._rpc_wire``), parent side: what one answers, and
how big the next should be (as joblib's auto-batching).  Pure (times are passed in); shared by
both clients' ``map`` and the pools."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["BatchResult", "Sizer", "check_columns", "columns_of", "service_time"]

#: Seconds a batch should take: the per-frame cost (~0.1 ms) is lost in it, and the last batches
#: of a map end close together.  Measured in the parent, it includes the parent's delays: with
#: cheap calls on a busy machine 32,768 items took 30 to 90 ms, which a 30 ms target shrank (a
#: third fewer calls per second).
TARGET = 0.1
#: A size grows at most ``GROWTH``-fold per measurement: an early, noisy one does not overshoot.
GROWTH = 8
#: The largest batch: a bound on one frame's memory when calls cost nothing measurable.
MAX_SIZE = 1 << 16
#: Batches a map keeps in flight per worker, so that the worker never waits for the parent.
WINDOW = 4


class BatchResult:
    """The outcome of a batch that the worker answered: the ``results`` of the items that ran,
    in order, then ``error``, ``None`` or item ``len(results)``'s exception, as a single call's.
    If that item raised, the items after it were not run; if its result could not be encoded
    (``EncodeError``, side ``"child"``), they were, and their results are lost."""

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
    and all are as long.  A ``range`` stays one: pickle carries its slices in a few bytes, so
    the parent (a cheap map's bottleneck) neither makes nor pickles the ints."""
    if not columns:
        raise ValueError("a batch needs at least one column of arguments")
    out: list[Any] = [c if type(c) is list or type(c) is range else list(c) for c in columns]
    n = len(out[0])
    if any(len(c) != n for c in out):
        lengths = sorted({len(c) for c in out})
        raise ValueError(f"a batch's columns of arguments are all as long, not {lengths}")
    return out


def service_time(sent: float, answered: float, previous: float | None) -> float:
    """A batch's time in the worker: from when it was both ``sent`` and ``previous`` (its
    worker's previous answer) to ``answered`` (time queued behind earlier batches is not its)."""
    start = sent if previous is None or previous < sent else previous
    return max(0.0, answered - start)


class Sizer:
    """The size of the next batch, from 1 up, from how long batches took (``observe``): it
    grows (by ``GROWTH`` at most) under ``target / 2``, shrinks over ``2 * target``, else stays
    (no oscillation); ``next_size(remaining)`` leaves at least ``2 * workers`` batches, so that
    the last ones spread over the workers and end close together.  ``ValueError`` for a
    ``target``, ``workers`` or ``max_size`` that is not positive."""

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
