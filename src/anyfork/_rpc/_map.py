"""RPC, parent side: the bookkeeping of one ``client.map``, shared by both clients (no I/O).

The first exception in item order is the map's; once one is known no frame is sent, but those in
flight are waited for (abandoning them would kill a sync-backend worker).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._batching import WINDOW, BatchResult, Sizer, service_time


class Unit:
    """One frame of a map, standing in for its future."""

    __slots__ = ("_done", "n", "run", "sent", "start")

    def __init__(self, run: MapRun, start: int, n: int, sent: float) -> None:
        self.run = run
        self.start = start
        self.n = n
        self.sent = sent
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, value: Any) -> None:  # Any: a single call's result, or a BatchResult
        self._done = True
        if self.n == 1:
            self.run.answered_one(self, value)
        else:
            assert type(value) is BatchResult
            self.run.answered(self, value.results, value.error)

    def set_exception(self, exc: BaseException) -> None:
        self._done = True
        self.run.answered(self, [], exc)


class MapRun:
    """Which items go out in which frame (``next_unit()`` until ``None``), their results in
    order, the first exception (``outcome()``); ``wake()`` when an answer lets the map go on.
    ``chunksize=None``: sized from measured times if ``batchable``, else one call per item."""

    def __init__(
        self,
        columns: list[list[Any]],
        chunksize: int | None,
        batchable: bool,
        clock: Callable[[], float],
        slots: int = 1,
    ) -> None:
        if chunksize is not None and (
            not isinstance(chunksize, int) or isinstance(chunksize, bool) or chunksize < 1
        ):
            raise ValueError(f"chunksize is a positive int or None, not {chunksize!r}")
        self.columns = columns
        self.n = n = min(map(len, columns), default=0)
        self.results: list[Any] = [None] * n  # Any: the function's results
        self.clock = clock
        self.sizer = Sizer(workers=slots) if chunksize is None and batchable else None
        self.chunksize = chunksize or 1
        # Frames in flight: a few batches per slot (the worker takes the next at once), or
        # enough single calls to keep the socket busy (all at once cost memory and time:
        # 1,000,000 calls went 3x slower).
        busy = WINDOW * slots
        self.window = busy if chunksize is None else max(busy, 4096 // chunksize)
        self.next = 0  # the first item not sent yet
        self.in_flight = 0
        self.error: BaseException | None = None
        self.error_at = n
        self.last_answer: float | None = None
        self.answers = 0
        self.wake: Callable[[], object] | None = None

    @property
    def finished(self) -> bool:
        return not self.in_flight and (self.error is not None or self.next >= self.n)

    def answered_since(self, answers: int) -> bool:
        return self.answers != answers or not self.in_flight

    def _can_send(self) -> bool:
        return self.error is None and self.next < self.n and self.in_flight < self.window

    def next_unit(self) -> Unit | None:
        if not self._can_send():
            return None
        start = self.next
        remaining = self.n - start
        sizer = self.sizer
        if sizer is None:  # no clock needed
            n, sent = (self.chunksize if self.chunksize < remaining else remaining), 0.0
        else:
            n, sent = sizer.next_size(remaining), self.clock()
        self.next = start + n
        self.in_flight += 1
        return Unit(self, start, n, sent)

    def batch(self, unit: Unit) -> list[list[Any]]:
        start, end = unit.start, unit.start + unit.n
        return [column[start:end] for column in self.columns]

    def args(self, unit: Unit) -> tuple[Any, ...]:
        return tuple([column[unit.start] for column in self.columns])

    def unsent(self, unit: Unit, exc: BaseException) -> None:
        self.in_flight -= 1
        self._fail(unit.start, exc)

    def answered_one(self, unit: Unit, value: Any) -> None:
        self.results[unit.start] = value
        self._answered(unit, True)

    def answered(self, unit: Unit, results: list[Any], error: BaseException | None) -> None:
        """``error``: of the item after ``results``, or of the whole frame (a dead worker...)."""
        start = unit.start
        self.results[start : start + len(results)] = results
        if error is not None:
            self._fail(start + len(results), error)
        self._answered(unit, error is None)

    def _answered(self, unit: Unit, ok: bool) -> None:
        self.in_flight -= 1
        self.answers += 1
        sizer = self.sizer
        if sizer is not None:
            now = self.clock()
            if ok:
                sizer.observe(unit.n, service_time(unit.sent, now, self.last_answer))
            self.last_answer = now
        if self.wake is not None and (self.finished or self._can_send()):
            self.wake()

    def _fail(self, index: int, exc: BaseException) -> None:
        if self.error is None or index < self.error_at:
            self.error, self.error_at = exc, index

    def outcome(self) -> list[Any]:
        if self.error is not None:
            raise self.error
        return self.results
