"""Tiny helpers shared by the parent-side modules.  Imported by ``_errors``, which a child may
load on its error path: it imports nothing at run time beyond ``sys``.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover - type checkers only
    from collections.abc import Awaitable
    from typing import Any, TypeVar

    T = TypeVar("T")


def publish(namespace: dict[str, Any]) -> None:
    """Set ``__module__ = "anyfork"`` on the objects a private module lists in ``__all__``, so
    tracebacks, reprs and pickling by reference name them as users import them, from the moment
    they exist (not only once someone has looked them up on the package)."""
    for name in namespace["__all__"]:
        obj = namespace[name]
        if getattr(obj, "__module__", None) == namespace["__name__"]:
            obj.__module__ = "anyfork"


async def wait_for(aw: Awaitable[T], timeout: float | None) -> T:
    """``asyncio.wait_for`` that raises the builtin ``TimeoutError`` on every Python: on 3.10,
    ``asyncio.TimeoutError`` is a class of its own, which an ``except TimeoutError`` misses."""
    import asyncio

    try:
        return await asyncio.wait_for(aw, timeout)
    except asyncio.TimeoutError:
        raise TimeoutError(f"no answer within {timeout} s") from None


def add_note(exc: BaseException, note: str) -> None:
    """``BaseException.add_note``; on 3.10, which lacks it, the note is kept in ``__notes__`` all
    the same (where code can read it; only 3.11+ tracebacks print it)."""
    if sys.version_info >= (3, 11):
        exc.add_note(note)
    else:
        notes = getattr(exc, "__notes__", None)
        if not isinstance(notes, list):
            notes = []
        notes.append(note)
        exc.__notes__ = notes  # type: ignore[attr-defined]  # 3.10: no such attribute declared


class NoPublicConstructor(type):
    """Metaclass of a class users get from anyfork but never construct (as trio's): calling the
    class raises ``TypeError``; anyfork makes instances with ``Cls._create(...)``.

    With ``typing.final`` on the class, type checkers also refuse subclasses."""

    def __call__(cls, *args: object, **kwargs: object) -> None:
        raise TypeError(f"{cls.__module__}.{cls.__qualname__} has no public constructor")

    def _create(cls: type[T], *args: object, **kwargs: object) -> T:
        return super().__call__(*args, **kwargs)  # type: ignore[misc, no-any-return]
