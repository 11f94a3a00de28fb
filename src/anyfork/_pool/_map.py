"""``Pool.map``: results in order, a bounded number of calls in flight, optional progress."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable, Sized
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._aio import Pool

Progress = Callable[[int, "int | None"], object]


def _progress_hook(
    progress: bool | Progress, total: int | None
) -> tuple[Progress, Callable[[], None]]:
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


async def pool_map(
    pool: Pool,
    iterables: tuple[Iterable[Any], ...],
    max_in_flight: int | None,
    timeout: float | None,
    progress: bool | Progress,
) -> AsyncGenerator[Any, None]:
    if not iterables:
        raise TypeError("map() needs at least one iterable")
    settings = pool._settings
    limit = 2 * settings.max * settings.load if max_in_flight is None else max_in_flight
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"max_in_flight is None or an int >= 1, not {max_in_flight!r}")
    loop = asyncio.get_running_loop()
    total = _length(iterables)
    hook, close_bar = _progress_hook(progress, total)
    done = 0
    # Each task: the call's task and whether a worker has taken it (then it is left to finish
    # if the map stops early, so the worker is not killed for nothing).
    pending: deque[tuple[asyncio.Task[Any], list[bool]]] = deque()

    def completed(task: asyncio.Task[Any]) -> None:
        if not task.cancelled():
            task.exception()  # retrieved here, so a dropped result never warns

    def submit(args: tuple[Any, ...]) -> None:
        taken = [False]

        def on_dispatch() -> bool:
            taken[0] = True
            return True

        task = loop.create_task(pool._call(args, {}, timeout, on_dispatch))
        task.add_done_callback(completed)
        pending.append((task, taken))

    items = iter(zip(*iterables, strict=False))  # stops with the shortest, as map() does
    exhausted = False
    try:
        while True:
            while not exhausted and len(pending) < limit:
                try:
                    args = next(items)
                except StopIteration:
                    exhausted = True
                    break
                submit(args)
            if not pending:
                return
            task, _ = pending[0]
            # shield: cancelling the consumer must not cancel a running call (that would kill
            # its worker with the sync backend); the cleanup below decides what to do with it.
            result = await asyncio.shield(task)
            pending.popleft()
            # Counted as delivered, in order: a done callback may not have run yet when a call
            # that finished early is awaited (the await then does not suspend).
            done += 1
            hook(done, total)
            yield result
    finally:
        for task, taken in pending:
            if not taken[0]:
                task.cancel()  # still queued: withdrawn
        close_bar()
