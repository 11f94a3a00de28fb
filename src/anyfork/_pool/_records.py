"""The pool's records: its workers and queued calls as the pool keeps them, the statistics it
reports, and the facts it reads from the OS (CPUs, a worker's RSS)."""

from __future__ import annotations

import asyncio
import builtins
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._util import publish
from . import _policy

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .._core._process import Process
    from .._rpc._start import Client

__all__ = ["PoolStatistics"]

#: Worker start-up deadline (fork + init + ready), unless the rpc option ``timeout`` says else.
START_TIMEOUT = 60.0
#: How long stopping one worker may take before it is killed.
STOP_TIMEOUT = 30.0

_RETIRE = "anyfork.pool:retire:9d2f6c1e8b7a4e35"  # anyfork.worker._RETIRE, without importing it
_RETIRE_MARKS = (_RETIRE, _RETIRE.encode())
_RPC_OPTIONS = frozenset({"backend", "serializer", "init", "on_event", "concurrency", "timeout"})


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def rss(pid: int) -> int | None:
    """Resident set size of ``pid`` in bytes (``VmRSS``), or ``None`` if it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


@dataclass(frozen=True)
class PoolStatistics:
    """A snapshot of a pool (``pool.statistics()``).

    ``workers`` counts every worker the pool holds (starting, idle, busy, retiring);
    ``starting`` those not ready yet; ``idle`` ready ones without calls; ``busy`` ones with
    calls; ``queued`` calls waiting for a worker.  The totals since the pool opened:
    ``started`` workers, ``died`` (exited or were killed unexpectedly), ``retired``
    (``worker.retire()``, ``max_calls``, ``max_memory``), ``calls`` completed (any outcome),
    ``failed_starts``.
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


class WorkerState:
    """What both pool drivers keep of a worker; each adds its connection (``_Worker`` below for
    the asyncio pool, ``_pool_threads._Worker`` for the executor)."""

    __slots__ = (
        "dead",
        "dispatched",
        "id",
        "idle_since",
        "load",
        "pid",
        "ready",
        "retiring",
        "stopping",
    )

    def __init__(self, wid: int, now: float) -> None:
        self.id = wid
        self.pid: int | None = None
        self.load = 0
        self.dispatched = 0
        self.ready = False
        self.retiring = False
        self.stopping = False
        self.dead = False
        self.idle_since = now


class _Worker(WorkerState):
    __slots__ = ("client", "task")

    def __init__(self, wid: int, now: float) -> None:
        super().__init__(wid, now)
        self.client: Client | None = None
        self.task: asyncio.Task[None] | None = None


class _Call:
    __slots__ = ("args", "fut", "kwargs", "timer")

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any], fut: asyncio.Future[_Worker]):
        self.args = args
        self.kwargs = kwargs
        self.fut = fut
        self.timer: asyncio.TimerHandle | None = None


class Totals:
    """What a pool has done since it opened (the totals of :class:`PoolStatistics`)."""

    __slots__ = ("calls", "died", "failed_starts", "retired", "started")

    def __init__(self) -> None:
        self.started = self.died = self.retired = self.calls = self.failed_starts = 0


def snapshot(workers: Iterable[WorkerState], queued: int, totals: Totals) -> PoolStatistics:
    """The statistics of a pool with these workers, this queue and these totals."""
    ws = list(workers)
    ready = [w for w in ws if w.ready]
    return PoolStatistics(
        workers=len(ws),
        starting=len(ws) - len(ready),
        idle=sum(1 for w in ready if w.load == 0 and not w.retiring),
        busy=sum(1 for w in ready if w.load),
        queued=queued,
        started=totals.started,
        died=totals.died,
        retired=totals.retired,
        calls=totals.calls,
        failed_starts=totals.failed_starts,
    )


def policy_view(
    workers: Iterable[WorkerState],
    queued: int,
    last_start: float | None,
    last_stop: float | None,
    closing: bool,
    start_failed: bool,
) -> _policy.PoolView:
    """The pool's state as ``_policy.decide`` takes it."""
    return _policy.PoolView(
        workers=[
            _policy.WorkerView(w.id, w.load, w.ready, w.retiring, w.idle_since) for w in workers
        ],
        queued=queued,
        last_start=last_start,
        last_stop=last_stop,
        closing=closing,
        start_failed=start_failed,
    )


def own_template(func: str) -> Process:
    """The template a pool makes when given none: forked from the default template, with the
    function's module imported once (every worker then forks with it loaded, and shared)."""
    from .._core._templates import new

    tmpl = new()
    module = func.partition(":")[0]
    if ":" in func and module != "__main__":
        tmpl.require(module)
    return tmpl


class PoolTemplate:
    """What both pool drivers fork their workers from: the caller's template, or the pool's
    own (made on first use, and made again if it dies; see ``retry_after``).  The template is
    primed with the RPC server before its first worker.  Thread-safe."""

    def __init__(self, template: Process | None, func: str) -> None:
        self.current = template
        self.owned = template is None
        self._func = func
        self._lock = threading.Lock()

    def get(self) -> Process:
        from .._rpc._start import prime

        with self._lock:
            if self.current is None:
                self.current = own_template(self._func)
            tmpl = self.current
        prime(tmpl)
        return tmpl

    def retry_after(self, failed: Process, attempt: int) -> bool:
        """Forking from ``failed`` raised ``SpawnError`` on try number ``attempt``: ``True``
        if the caller should try once more, because it was the pool's own template (now
        dropped: the next ``get`` makes a new one, from a new default template if need be)."""
        if not self.owned or attempt > 1:
            return False
        with self._lock:
            if self.current is failed:
                self.current = None
        failed.close()
        return True

    def close(self) -> None:
        """Close the pool's own template; the caller's is theirs."""
        with self._lock:
            tmpl = self.current if self.owned else None
            if self.owned:
                self.current = None
        if tmpl is not None:
            tmpl.close()


def settings(max: int | None, idle: int, load: int, start: float, stop: float) -> _policy.Settings:
    """The policy's settings from a pool's arguments (``max`` defaults to the usable CPUs, or
    ``idle`` if larger); raises ``ValueError`` for bad values."""
    if max is None:
        max = builtins.max(cpu_count(), idle) if isinstance(idle, int) else cpu_count()
    return _policy.Settings(max, idle, load, start, stop)


def check_recycling(max_calls: int | None, max_memory: int | None) -> None:
    if max_calls is not None and (not isinstance(max_calls, int) or max_calls < 1):
        raise ValueError(f"max_calls is None or an int >= 1, not {max_calls!r}")
    if max_memory is not None and (not isinstance(max_memory, int) or max_memory < 1):
        raise ValueError(f"max_memory is None or a number of bytes >= 1, not {max_memory!r}")


def worker_options(
    rpc_options: dict[str, Any],
) -> tuple[dict[str, Any], Callable[..., object] | None]:
    """Check the options a pool passes on to each worker's ``rpc()``; return them (with the
    start-up deadline defaulted) and the user's ``on_event``, which the pool wraps."""
    unknown = set(rpc_options) - _RPC_OPTIONS
    if unknown:
        raise TypeError(f"Pool() got unexpected keyword arguments {sorted(unknown)}")
    options = dict(rpc_options)
    on_event = options.pop("on_event", None)
    options.setdefault("timeout", START_TIMEOUT)
    return options, on_event


publish(globals())
