"""The main program, parent side (the child's is ``_child._main``): where the main script is,
and what to say when a function cannot be found in another process.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

#: The module names a reference to a function of the main program has: ``__main__``, and
#: ``__mp_main__``, the main script imported in a child (by multiprocessing, or by anyfork).
MAIN_NAMES = ("__main__", "__mp_main__")


def names_main(ref: str) -> bool:
    """``ref`` (a function reference) names a function of the main program: ``__main__:f``, or a
    bare name (which the child looks up in its ``__main__``)."""
    module, sep, _ = ref.partition(":")
    return not sep or module in MAIN_NAMES


def location() -> tuple[str, str]:
    """Where a child finds this program's main module: ``("path", file)`` for a script,
    ``("module", name)`` for ``python -m name``, else ``("none", why)``."""
    main = sys.modules.get("__main__")
    spec_name = getattr(getattr(main, "__spec__", None), "name", None)
    if isinstance(spec_name, str) and spec_name and spec_name != "__main__":
        return "module", spec_name  # python -m pkg.mod (also a package's pkg.__main__)
    path = getattr(main, "__file__", None)
    if isinstance(path, str) and os.path.isfile(path):
        return "path", os.path.abspath(path)
    return "none", _why_no_file(path)


def _why_no_file(path: object) -> str:
    if "ipykernel" in sys.modules or "IPython" in sys.modules:
        return "a notebook or IPython session"
    if hasattr(sys, "ps1") or sys.flags.interactive:
        return "an interactive session"
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0 == "-c":
        return "`python -c` code"
    if argv0 in ("", "-"):
        return "code read from standard input"
    if isinstance(path, str):
        return f"{path!r}, which is not a file (a zip application?)"
    return "a module without a file"


def unreachable(func: Callable[..., Any], why: str) -> str:
    """The message for a function of a main module no child can import."""
    name = getattr(func, "__qualname__", repr(func))
    return (
        f"{name} is defined in the main module, which is {why}: no child process can import "
        f"it to find the function.  Ways out: define it in an importable module; or define it "
        f"in the process with eval() and run it by name; or make a template of this program "
        f"with anyfork.main_template() after defining it and fork from that; RPC and pools can "
        f'send it by value with serializer="cloudpickle"'
    )


def alias_in_parent() -> None:
    """Objects a child pickles from the main script name it ``__mp_main__``: so that they load
    here too, ``__mp_main__`` is this program's ``__main__`` (as multiprocessing does)."""
    main = sys.modules.get("__main__")
    if main is not None:
        sys.modules.setdefault("__mp_main__", main)


def refuse(what: str) -> None:
    """Raise ``StopMainImport`` if this process is a child importing its parent's main script
    (``what``: the entry point called, e.g. ``"anyfork.new()"``)."""
    child = sys.modules.get("anyfork._child._main")
    if child is not None:
        error = child.refusal(what)
        if error is not None:
            raise error
