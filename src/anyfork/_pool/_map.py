"""``map`` for every pool face: results in order, a bounded number of calls in flight, progress.

One :class:`Window` holds the logic (read the iterables lazily, keep at most ``limit`` calls
submitted, hand back the oldest, count and report progress, withdraw what is still queued when
the map stops early); the two generators below only wait, one with ``await``, one blocking.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Sized
from typing import Any, Generic, TypeVar

from ._policy import Settings

F = TypeVar("F")
Progress = Callable[[int, "int | None"], object]


def window_size(max_in_flight: int | None, settings: Settings) -> int:
    """``max_in_flight``, checked, or by default twice the pool's capacity (``2 * max * load``)."""
    if max_in_flight is None:
        return 2 * settings.max * settings.load
    if not isinstance(max_in_flight, int) or isinstance(max_in_flight, bool) or max_in_flight < 1:
        raise ValueError(f"max_in_flight is None or an int >= 1, not {max_in_flight!r}")
    return max_in_flight


class Window(Generic[F]):
    """The calls of one ``map`` in flight: ``submit(args)`` makes one (a future, already
    queued), ``withdraw(future)`` takes one back if it has not started (and makes sure an
    abandoned one's error is never reported as unretrieved)."""

    def __init__(
        self,
        iterables: tuple[Iterable[Any], ...],
        limit: int,
        progress: bool | Progress,
        submit: Callable[[tuple[Any, ...]], F],
        withdraw: Callable[[F], object],
    ) -> None:
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        self._total = _length(iterables)
        self._items = iter(zip(*iterables, strict=False))  # stops with the shortest, as map()
        self._limit = limit
        self._submit = submit
        self._withdraw = withdraw
        self._pending: deque[F] = deque()
        self._exhausted = False
        self._done = 0
        self._progress = progress
        self._hook: Progress | None = None
        self._close_bar: Callable[[], object] = lambda: None

    def next(self) -> F | None:
        """Submit calls up to the limit; return the oldest one's future (``None``: all done)."""
        if self._hook is None:
            self._hook, self._close_bar = _progress_hook(self._progress, self._total)
        pending = self._pending
        while not self._exhausted and len(pending) < self._limit:
            try:
                args = next(self._items)
            except StopIteration:
                self._exhausted = True
                break
            pending.append(self._submit(args))
        return pending[0] if pending else None

    def delivered(self) -> None:
        """The oldest call's result has been taken (counted as delivered, in order)."""
        self._pending.popleft()
        self._done += 1
        assert self._hook is not None
        self._hook(self._done, self._total)

    def close(self) -> None:
        """The map ends (done, failed or stopped early): calls still queued are withdrawn,
        those running are left to finish (their results are dropped)."""
        pending, self._pending = self._pending, deque()
        for fut in pending:
            self._withdraw(fut)
        self._close_bar()


async def amap(window: Window[Any]) -> AsyncGenerator[Any, None]:
    """The results of ``window``'s calls in order, awaited."""
    try:
        while (fut := window.next()) is not None:
            # shield: cancelling the consumer must not cancel a running call (that would kill
            # its worker with the sync backend); close() decides what to do with it.
            result = await asyncio.shield(fut)
            window.delivered()
            yield result
    finally:
        window.close()


def bmap(window: Window[Any]) -> Generator[Any, None, None]:
    """The results of ``window``'s calls in order (``concurrent.futures`` futures), waited for."""
    try:
        while (fut := window.next()) is not None:
            result = fut.result()
            window.delivered()
            yield result
    finally:
        window.close()


def _progress_hook(
    progress: bool | Progress, total: int | None
) -> tuple[Progress, Callable[[], object]]:
    """``(hook(done, total), close())`` for ``progress``: a callable as it is, ``True`` as a
    tqdm bar when tqdm is installed (else nothing), ``False`` nothing."""
    if callable(progress):
        return progress, lambda: None
    if progress:
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            bar = tqdm(total=total, unit="call")
            return (lambda done, total: bar.update(1)), bar.close
    return (lambda done, total: None), lambda: None


def _length(iterables: tuple[Iterable[Any], ...]) -> int | None:
    if all(isinstance(it, Sized) for it in iterables):
        return min(len(it) for it in iterables)  # type: ignore[arg-type]
    return None
