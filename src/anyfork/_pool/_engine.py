"""What both engines (``_aio_engine.AsyncEngine``, ``_threads.ThreadsEngine``) share; each adds
how it runs calls and workers."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable
from typing import Any, Generic

from .._core._process import Func
from .._errors import ClosedError, WorkerDiedError
from . import _policy
from ._core import C, PoolCore, W
from ._map import Delivery, MapJob, Progress, Unit
from ._policy import positive
from ._records import PoolStatistics
from ._worker import Starter, Templates, rss


class Engine(Generic[W, C]):
    """``_lock`` guards the core (the threads engine's; nothing for the asyncio engine, whose
    loop is its one thread)."""

    _lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()

    def __init__(
        self,
        template: Templates,
        func: Func,
        settings: _policy.Settings,
        max_calls: int | None,
        max_memory: int | None,
        on_error: Callable[[BaseException], object] | None,
        on_close: Callable[[], object] | None,
        rpc_options: dict[str, Any],
        face: str = "Pool",
        setup: tuple[Callable[..., object], tuple[Any, ...]] | None = None,
    ) -> None:
        self._starter = Starter(template, func, rpc_options, face, setup)
        self._core: PoolCore[W, C] = PoolCore(
            settings,
            max_calls=max_calls,
            max_memory=max_memory,
            new_worker=self._new_worker,
            measure=rss,
        )
        self._on_error = on_error
        self._on_close = on_close

    def _new_worker(self, wid: int, now: float) -> W:
        raise NotImplementedError

    def _admit(self) -> None:
        """A new call (or map): ``ClosedError`` once closing; workers without the authkey a new
        Manager's proxies need are replaced."""
        if self._core.closing:
            raise ClosedError("the pool is closed")
        if self._starter.rekey():
            self._core.retire_keyless()

    def _job(self, chunksize: int | None, timeout: float | None = None) -> MapJob[C]:
        """A new map's job; ``timeout``: seconds per item of each of its calls."""
        return MapJob(
            functools.partial(self._unit, timeout),
            chunksize=chunksize,
            batchable=self._starter.batchable,
            workers=self._core.settings.max,
        )

    def _unit(self, timeout: float | None, job: MapJob[C], unit: Unit) -> C:
        """The call carrying ``unit`` (made by the core, as a worker takes it)."""
        raise NotImplementedError

    def _queue_job(self, job: MapJob[C]) -> None:
        """Queue ``job`` (again); ``ClosedError`` once closing."""
        raise NotImplementedError

    def _withdraw_unit(self, unit: Unit) -> None:
        """A map stopped early: the call of ``unit`` is withdrawn unless it has started."""
        raise NotImplementedError

    def _map(
        self,
        iterables: tuple[Iterable[Any], ...],
        max_in_flight: int | None,
        timeout: float | None,
        progress: bool | Progress,
        chunksize: int | None,
    ) -> Delivery:
        """A new map (``Pool.map``'s arguments, checked)."""
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        if max_in_flight is None:  # twice the pool's capacity
            max_in_flight = 2 * self._core.settings.max * self._core.settings.load
        elif not positive(max_in_flight):
            raise ValueError(f"max_in_flight is None or an int >= 1, not {max_in_flight!r}")
        job = self._job(chunksize, timeout)
        return Delivery(
            job, iterables, max_in_flight, progress, self._queue_job, self._withdraw_unit
        )

    def _retire(self, worker: W) -> None:
        """``anyfork.worker.retire()``."""
        with self._lock:
            if self._core.retire(worker):
                self._schedule()

    def _schedule(self) -> None:
        """Ask the core what to do now, and do it."""
        raise NotImplementedError

    def _check_opened(self) -> None:
        """Once :func:`opened`: raise the start-up error if no worker could start."""
        error = self._core.start_error
        if error is not None and self._core.totals.started == 0:
            raise error

    def _describe(self, face: str) -> str:
        state = "closed" if self._core.closing else "open"
        s = self.statistics()
        func = self._starter.func
        return (
            f"<anyfork.{face} {func} {state} workers={s.workers} busy={s.busy} queued={s.queued}>"
        )

    def statistics(self) -> PoolStatistics:
        """A snapshot of the pool's workers, queue and totals (see :class:`PoolStatistics`)."""
        with self._lock:
            return self._core.statistics()

    def worker_pids(self) -> list[int]:
        """The pids of the pool's ready workers, oldest first."""
        with self._lock:
            return self._core.worker_pids()


def opened(stats: PoolStatistics) -> bool:
    """The initial workers have started, or one has failed to."""
    return stats.starting == 0 or stats.failed_starts > 0


def not_reached(timeout: float | None, stats: PoolStatistics) -> TimeoutError:
    return TimeoutError(f"the pool did not reach the condition within {timeout} s: {stats}")


def as_reported(exc: BaseException) -> BaseException:
    """``exc`` as the pool reports it (a worker's death: see ``_broken``)."""
    if isinstance(exc, WorkerDiedError):
        from ._broken import died

        return died(exc)
    return exc
