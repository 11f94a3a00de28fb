"""The pool's scheduling and scaling policy: a pure function of (now, state, settings) -> actions.

No I/O, no clocks, no asyncio: time comes in as ``now``, the pool's state as a snapshot, and
what to do comes out as a list of actions (``Dispatch``, ``Stop``, ``Start``, ``Wake``).

The rules (AnyEvent::Fork::Pool's, its observed bugs fixed: §1.7 of the project's
shared/reference/anyevent-fork-family.md):

* A queued call goes to the least-loaded ready worker below ``load`` (ties: the lowest id, so
  work concentrates on the oldest workers and the others can stop); none to starting or
  retiring ones.
* A worker starts when calls are queued beyond what the starting workers will take, or fewer
  than ``idle`` are idle (starting ones count), never beyond ``max``; paced by ``start`` except
  below ``idle`` workers (the initial size, replacing dead ones) and for an empty pool's first.
  After a failed start only calls trigger starts, paced by at least ``FAILED_START_BACKOFF``
  unless the pool is empty (call-driven, never a spin).
* An idle worker beyond ``idle`` stops after ``stop`` idle seconds, at most one per ``stop``
  seconds, the longest-idle first; an ``idle=0`` pool shrinks to zero (the original never
  arms its stop timer then).
* A retiring worker stops once its calls are done, counting against ``max`` until then.
* Closing: queued calls are still served (starting workers if need be); once the queue is
  empty idle workers stop, busy ones as they drain.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

#: Pacing of call-driven starts after a start failed (seconds), so a broken ``init`` or template
#: cannot make a busy pool fork in a tight loop.
FAILED_START_BACKOFF = 1.0


@dataclass(frozen=True, slots=True)
class Settings:
    """Validated pool settings (see ``anyfork.Pool`` for their meaning)."""

    max: int
    idle: int = 1
    load: int = 2
    start: float = 0.1
    stop: float = 10.0

    def __post_init__(self) -> None:
        if not positive(self.max):
            raise ValueError(f"max is the largest number of workers, an int >= 1, not {self.max!r}")
        if not _is_int(self.idle) or self.idle < 0:
            raise ValueError(f"idle is a number of idle workers, an int >= 0, not {self.idle!r}")
        if self.idle > self.max:
            raise ValueError(f"idle ({self.idle}) cannot exceed max ({self.max})")
        if not positive(self.load):
            raise ValueError(
                f"load is the number of concurrent calls per worker, an int >= 1, not {self.load!r}"
            )
        for name in ("start", "stop"):
            value = getattr(self, name)
            if not (_is_int(value) or isinstance(value, float)) or not 0 <= value < math.inf:
                raise ValueError(
                    f"{name} is a delay in seconds, a finite number >= 0, not {value!r}"
                )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive(value: object) -> bool:
    """An int >= 1 (not a bool): a count of workers, calls, items or bytes."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True, slots=True)
class WorkerView:
    """One worker as the policy sees it."""

    id: int
    load: int = 0
    ready: bool = True  # False while starting
    retiring: bool = False  # asked to be replaced, or recycled: gets no new calls
    idle_since: float = 0.0  # when its load last dropped to 0 (or it became ready)


@dataclass(frozen=True, slots=True)
class PoolView:
    """The pool's state as the policy sees it."""

    workers: Sequence[WorkerView] = ()
    queued: int = 0
    last_start: float | None = None  # when the last worker was started
    last_stop: float | None = None  # when the last idle worker was stopped
    closing: bool = False
    start_failed: bool = False  # the last start failed (cleared by a successful one)


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Send the oldest queued call to worker ``worker``."""

    worker: int


@dataclass(frozen=True, slots=True)
class Stop:
    """Stop worker ``worker`` (it has no calls): ``why`` is "idle" (beyond ``idle`` for long
    enough), "retired" (it asked to be replaced, or was recycled, and has drained) or
    "closing"."""

    worker: int
    why: Literal["idle", "retired", "closing"]


@dataclass(frozen=True, slots=True)
class Start:
    """Start one worker."""


@dataclass(frozen=True, slots=True)
class Wake:
    """Call ``decide`` again at time ``at`` (a pacing delay expires then), unless something else
    happens first."""

    at: float


Action = Dispatch | Stop | Start | Wake


def decide(now: float, state: PoolView, settings: Settings) -> list[Action]:
    """What the pool should do now.  Pure: the same arguments always give the same actions.

    The pool applies the actions in order and calls ``decide`` again after every change (a
    call queued or finished, a worker ready, dead or retiring) and at the ``Wake`` time.
    """
    actions: list[Action] = []
    cap = settings.load
    queued = state.queued

    # Dispatch: least-loaded first, ties to the lowest id.
    heap = [(w.load, w.id) for w in state.workers if w.ready and not w.retiring and w.load < cap]
    heapq.heapify(heap)
    loads = {w.id: w.load for w in state.workers}
    while queued and heap:
        load, wid = heapq.heappop(heap)
        actions.append(Dispatch(wid))
        loads[wid] = load + 1
        queued -= 1
        if load + 1 < cap:
            heapq.heappush(heap, (load + 1, wid))

    # Retiring workers leave once drained (a starting one cannot be retiring yet: it has run
    # nothing; if the pool marks one anyway, it waits until ready).
    remaining: list[WorkerView] = []
    for w in state.workers:
        if w.retiring and w.ready and loads[w.id] == 0:
            actions.append(Stop(w.id, "retired"))
        else:
            remaining.append(w)

    starting = sum(1 for w in remaining if not w.ready)
    idle = [w for w in remaining if w.ready and not w.retiring and loads[w.id] == 0]
    n = len(remaining)
    wake: float | None = None

    if state.closing and not queued:
        actions.extend(Stop(w.id, "closing") for w in idle)
        return actions

    # Starts.
    idle_count = len(idle) + starting
    demand = queued - starting * cap
    maintain = not state.closing and not state.start_failed
    last = state.last_start
    gap = max(settings.start, FAILED_START_BACKOFF) if state.start_failed else settings.start
    while n < settings.max and (demand > 0 or (maintain and idle_count < settings.idle)):
        unpaced = n == 0 or (maintain and n < settings.idle)
        if unpaced or last is None or now >= last + gap:
            actions.append(Start())
            n += 1
            idle_count += 1
            demand -= cap
            last = now
        else:
            wake = last + gap
            break

    # Idle stops: beyond `idle`, idle for `stop` seconds, at most one per `stop` seconds.
    if not state.closing:
        idle.sort(key=lambda w: (w.idle_since, -w.id))
        last_stop = state.last_stop
        for w in idle:
            if idle_count <= settings.idle:
                break
            due = w.idle_since + settings.stop
            if last_stop is not None:
                due = max(due, last_stop + settings.stop)
            if now < due:
                wake = due if wake is None else min(wake, due)
                break
            actions.append(Stop(w.id, "idle"))
            idle_count -= 1
            last_stop = now

    if wake is not None:
        actions.append(Wake(wake))
    return actions
