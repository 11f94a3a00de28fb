"""asyncio helpers shared by the parent-side modules."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def wait_for(aw: Awaitable[T], timeout: float | None) -> T:
    """``asyncio.wait_for`` that raises the builtin ``TimeoutError`` on every Python: on 3.10,
    ``asyncio.TimeoutError`` is a class of its own, which an ``except TimeoutError`` misses."""
    try:
        return await asyncio.wait_for(aw, timeout)
    except asyncio.TimeoutError:
        raise TimeoutError(f"no answer within {timeout} s") from None
