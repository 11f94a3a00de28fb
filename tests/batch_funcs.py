"""Functions the batch tests serve in workers (stdlib only, cheap to import)."""

from __future__ import annotations

import sys
from typing import Any


def caller(x: Any) -> tuple[Any, str]:
    """``x``, and the name of the code that called this function."""
    return x, sys._getframe(1).f_code.co_name


def fail_at_3(x: int) -> int:
    if x == 3:
        raise ValueError(f"item {x}")
    return x


class Same:
    """Equal to everything: identity, not equality, must decide that items share a function."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = object.__hash__

    def __call__(self, x: Any) -> Any:
        return self.tag, x
