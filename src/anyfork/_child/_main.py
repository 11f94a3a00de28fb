"""The parent's main script in a child: imported under another name, on demand (how:
docs/design.md, "The main script in a child")."""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from types import CodeType, ModuleType

#: Where the parent's main script is: ``(how, where)``, ``how`` being "path", "module", or
#: "none" (``where`` then says why there is no script: an interactive session...).
location: tuple[str, str] | None = None
#: The parent's ``sys.argv``, which the script sees while it is imported (and after).
argv: list[str] = []
#: The script being imported (its path or module name), while it is: anyfork refuses to start
#: processes meanwhile (``StopMainImport``).
importing: str | None = None
#: The imported script, once imported (also when the import stopped early).
module: ModuleType | None = None
#: Where the import stopped (``file:line``), when an anyfork call stopped it.
stopped_at = ""
#: Why the import failed, when it did.
failure = ""


class StopMainImport(BaseException):
    """Raised by anyfork's entry points (``new()``, ``Pool()``...) in a child process while it
    imports the parent's main script: it stops the import at that line, keeping what the script
    defined above it.  A ``BaseException``, so that the script's ``except Exception`` lets it
    through.  Put the program's top-level code under ``if __name__ == "__main__":``."""


def learn(how: str, where: str, now: bool, parent_argv: list[str]) -> None:
    """A MAIN command: remember where the parent's main script is; import it ``now``, or when
    a name is first missing from ``__main__``."""
    global location, argv
    if location is None and module is None:
        location, argv = (how, where), parent_argv
        main = sys.modules["__main__"]
        name = getattr(getattr(main, "__spec__", None), "name", None)
        if (how == "path" and getattr(main, "__file__", None) == where) or (
            how == "module" and name == where
        ):
            location = None  # a copy of that very program (forked from it): nothing to import
            return
        if how != "none":
            main.__dict__.setdefault("__getattr__", _missing_name)
    if now and location is not None and location[0] != "none":
        load()


def _missing_name(name: str) -> object:
    """``__main__.__getattr__``: a name the process's ``__main__`` lacks is looked up in the
    parent's main script, imported for it (once)."""
    if name.startswith("__") or importing is not None:
        raise AttributeError(f"module '__main__' has no attribute {name!r}")
    script = load()
    if script is None:
        raise AttributeError(f"module '__main__' has no attribute {name!r} ({failure})")
    return getattr(script, name)


def load() -> ModuleType | None:
    """Import the parent's main script as ``__mp_main__`` (once) and make it ``__main__``;
    ``None`` when that failed before (``failure`` says why)."""
    global module, importing, stopped_at, failure
    if module is not None or failure or location is None:
        return module
    how, where = location
    old = sys.modules["__main__"]
    script = type(sys)("__mp_main__")
    try:
        code = _code(script, how, where)
    except Exception as exc:
        failure = f"the parent's main script {where} could not be read: {exc!r}"
        raise ImportError(failure) from exc
    sys.argv = list(argv)
    sys.modules["__main__"] = sys.modules["__mp_main__"] = script
    importing = where
    try:
        exec(code, script.__dict__)
    except StopMainImport as stop:
        stopped_at = _script_line(stop, script)
    except BaseException as exc:
        # SystemExit too (an unguarded sys.exit(), argparse): a child must not exit for it.
        sys.modules["__main__"] = old
        sys.modules.pop("__mp_main__", None)
        failure = f"importing the parent's main script {where} failed: {exc!r}"
        raise ImportError(failure) from exc
    finally:
        importing = None
    old.__dict__.pop("__getattr__", None)
    # What eval() defined in the process's own ``__main__`` stays in the (new) ``__main__``.
    for key, value in old.__dict__.items():
        if not key.startswith("__"):
            script.__dict__.setdefault(key, value)
    module = script
    return script


def _code(script: ModuleType, how: str, where: str) -> CodeType:
    """The script's code object, with ``script`` set up as the import system would."""
    if how == "module":
        import importlib.util

        spec = importlib.util.find_spec(where)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "get_code"):
            raise ImportError(f"no module named {where!r} on the child's sys.path")
        script.__spec__ = spec
        script.__loader__ = spec.loader
        script.__package__ = spec.parent
        script.__file__ = spec.origin
        code: CodeType = spec.loader.get_code(where)
        return code
    with open(where, "rb") as f:
        source = f.read()
    script.__file__ = where
    return compile(source, where, "exec")


def _script_line(stop: StopMainImport, script: ModuleType) -> str:
    """Where in the script the import stopped (the script's last frame in the traceback)."""
    where = ""
    tb = stop.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals is script.__dict__:
            where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
        tb = tb.tb_next
    return where


def refusal(what: str) -> StopMainImport | None:
    """The error an anyfork entry point (``what``) raises while this process imports the
    parent's main script, else ``None``."""
    if importing is None:
        return None
    return StopMainImport(
        f"{what} was called while this child process imports the parent's main script "
        f"({importing}) to find a function in it: a script without an "
        f'`if __name__ == "__main__":` guard runs its top level in every child that needs '
        f"one of its functions.  anyfork stops the import here: what the script defined "
        f"above this line is available, what comes after it is not.  Put the program's "
        f"top-level code under the guard."
    )


def missing(qualname: str, forked: bool) -> str:
    """Why ``__main__`` has no ``qualname``, and the ways out."""
    name = qualname.partition(".")[0]
    ways = (
        "define it in an importable module, or in this process with eval(); RPC and pools "
        'can send a function by value with serializer="cloudpickle"'
    )
    if forked:
        return (
            f"__main__ has no attribute {name!r}: this process's __main__ is a copy of the main "
            f"program as it was when main_template() or start_early() forked it, and {name!r} "
            f"was not defined then; define it before that call, or {ways}"
        )
    if location is None:
        return f"__main__ has no attribute {name!r}; {ways}"
    how, where = location
    if how == "none":
        return (
            f"__main__ has no attribute {name!r}: the parent's main module is {where}, which "
            f"has no file a child could import; {ways}, or fork it from main_template()"
        )
    if failure:
        return f"__main__ has no attribute {name!r}: {failure}"
    stop = (
        f"; its import stopped at {stopped_at}, a call of anyfork at the top level (what "
        f"follows that line is not run in a child)"
        if stopped_at
        else ""
    )
    return (
        f"the parent's main script {where} (imported in the child as __mp_main__) has no "
        f"attribute {name!r} at its top level{stop}: functions defined under "
        f'`if __name__ == "__main__":` do not exist in a child; define it at the top level, '
        f"or {ways}"
    )
