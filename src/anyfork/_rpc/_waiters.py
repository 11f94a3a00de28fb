"""RPC, parent side: what stands for a call until its answer comes, where there is no future.

``Client`` gives each call an ``asyncio.Future``; the blocking client a ``Box``; a ``map`` one
``Slot`` per call of its ``Batch`` (either client).  All three have what the frame handling in
``_base`` uses: ``done()``, ``set_result()``, ``set_exception()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Box:
    """The blocking client's stand-in for a future."""

    __slots__ = ("_done", "exc", "value")

    def __init__(self) -> None:
        self._done = False
        self.value: Any = None  # Any: whatever the worker's function returns
        self.exc: BaseException | None = None

    def done(self) -> bool:
        return self._done

    def set_result(self, value: Any) -> None:
        self.value, self._done = value, True

    def set_exception(self, exc: BaseException) -> None:
        self.exc, self._done = exc, True


class Batch:
    """The results of ``map``: one slot per call, in order; ``wake()`` runs when the last
    call has answered."""

    __slots__ = ("cids", "errors", "left", "results", "wake")

    def __init__(self, n: int, wake: Callable[[], object] | None) -> None:
        self.results: list[Any] = [None] * n  # Any: the function's results
        self.errors: list[tuple[int, BaseException]] = []
        self.left = n
        self.cids: list[int] = []
        self.wake = wake

    def outcome(self) -> list[Any]:
        """The results, or the exception of the first call (in order) that failed."""
        if self.errors:
            raise min(self.errors, key=lambda item: item[0])[1]
        return self.results


class Slot:
    """One call of a :class:`Batch`, standing in for its future."""

    __slots__ = ("_done", "batch", "index")

    def __init__(self, batch: Batch, index: int) -> None:
        self.batch = batch
        self.index = index
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, value: Any) -> None:
        self._done = True
        batch = self.batch
        batch.results[self.index] = value
        batch.left -= 1
        if not batch.left and batch.wake is not None:
            batch.wake()

    def set_exception(self, exc: BaseException) -> None:
        self.batch.errors.append((self.index, exc))
        self.set_result(None)


Waiter = Any  # asyncio.Future[Any] | Box | Slot: anything with done/set_result/set_exception
