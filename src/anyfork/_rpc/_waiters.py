"""RPC, parent side: what stands for a call until its answer comes, where there is no future.

``Client`` gives each call (and each batch) an ``asyncio.Future``; the blocking client a
``Box``; a ``map`` one ``_map.Unit`` per frame (either client).  All three have what the frame
handling in ``_connection`` uses: ``done()``, ``set_result()``, ``set_exception()``.
"""

from __future__ import annotations

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

    def outcome(self) -> Any:
        """The value, or raise the exception."""
        if self.exc is not None:
            raise self.exc
        return self.value


Waiter = Any  # asyncio.Future[Any] | Box | Unit: anything with done/set_result/set_exception
