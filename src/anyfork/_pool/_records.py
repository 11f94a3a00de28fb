"""The pool's records: a worker as the pool keeps it, the totals, and the statistics it reports."""

from __future__ import annotations

from dataclasses import dataclass

from .._util import publish

__all__ = ["PoolStatistics"]


@dataclass(frozen=True)
class PoolStatistics:
    """A snapshot of a pool (``pool.statistics()``).

    ``workers`` counts every worker the pool holds (starting, idle, busy, retiring);
    ``starting`` those not ready yet; ``idle`` ready ones without calls; ``busy`` ones with
    calls; ``queued`` calls waiting for a worker.  The totals since the pool opened:
    ``started`` workers, ``died`` (exited or were killed unexpectedly, or killed because a call
    they ran timed out or was cancelled), ``retired`` (``worker.retire()``, ``max_calls``,
    ``max_memory``), ``calls`` that ran to their end in a worker (they returned or raised; not
    those whose worker died, nor those abandoned while running), ``failed_starts``.
    """

    workers: int
    starting: int
    idle: int
    busy: int
    queued: int
    started: int
    died: int
    retired: int
    calls: int
    failed_starts: int


@dataclass(slots=True, eq=False)
class Worker:
    """A worker as the pool's core keeps it; each engine adds its connection in a subclass."""

    id: int
    idle_since: float
    pid: int | None = None
    load: int = 0  # calls given to it and not finished
    dispatched: int = 0  # calls given to it in its life (for max_calls)
    ready: bool = False  # started: its RPC server answered
    retiring: bool = False  # gets no new calls; stops once drained
    stopping: bool = False  # the pool is stopping it (its end is expected)
    dead: bool = False  # it died, or the pool condemned it: out of rotation for good
    keyed: bool = False  # it has the parent's multiprocessing authkey (_worker.Starter)


class Totals:
    """What a pool has done since it opened (the totals of :class:`PoolStatistics`)."""

    __slots__ = ("calls", "died", "failed_starts", "retired", "started")

    def __init__(self) -> None:
        self.started = self.died = self.retired = self.calls = self.failed_starts = 0


publish(globals())
