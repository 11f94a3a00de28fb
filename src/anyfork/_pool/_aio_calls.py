"""The asyncio engine's calls: an ``asyncio.Future`` that knows where it is (its pool, its
worker, the client's call it was sent as), so that cancelling it withdraws or abandons it with
no task and no done-callback per call."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._aio_engine import AsyncEngine, _Worker
    from ._map import MapJob, Unit


class Call(asyncio.Future[Any]):
    """A pool call (or a map's: its ``job`` and ``unit``); cancelled: see ``Pool``."""

    __slots__ = (
        "args",
        "inner",
        "job",
        "kwargs",
        "on_event",
        "pool",
        "sent",
        "timeout",
        "timer",
        "took",
        "unit",
        "worker",
    )

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    on_event: Callable[..., object] | None
    job: MapJob[Call] | None  # a map's call: its job, and the items it carries
    unit: Unit | None
    sent: float  # when it was sent (a map's call)
    took: float | None  # the seconds its worker spent on it (a map's call)
    pool: AsyncEngine | None
    worker: _Worker | None  # the worker it was sent to; None while queued
    inner: asyncio.Future[Any] | None  # the client's call, once sent
    timer: asyncio.TimerHandle | None
    timeout: float | None

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        on_event: Callable[..., object] | None = None,
    ) -> None:
        super().__init__(loop=loop)
        self.args, self.kwargs, self.timeout, self.on_event = args, kwargs, timeout, on_event
        self.worker = self.inner = self.timer = self.job = self.unit = self.pool = None
        self.took = None

    def cancel(self, msg: Any = None) -> bool:
        if not super().cancel(msg):
            return False
        pool, self.pool = self.pool, None
        if pool is not None:
            pool._abandon(self)
        return True

    def withdraw(self) -> None:
        """For ``map`` stopping early: cancel it if it is still queued; a running call is left
        to finish, and its outcome is dropped without being reported as unretrieved."""
        if self.worker is None:
            self.cancel()
        else:
            self.add_done_callback(_retrieve)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def answered(call: Call) -> None:
    """A map's call is over: its job hears how it went."""
    assert call.job is not None
    assert call.unit is not None
    call.job.answered(call.unit, call, call.took, asyncio.CancelledError)
