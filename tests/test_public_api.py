"""The public API surface: what ``anyfork`` and ``anyfork.worker`` export, and how it looks.

After anyio's ``test_all_attributes``, trio-parallel's ``test_nice_names`` and trio's
``test_exports`` (style guide §3.9).
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import anyfork
import anyfork.worker

PUBLIC = sorted(anyfork.__all__)
#: The private modules the lazy root re-exports from.
SOURCES = sorted(set(anyfork._LAZY.values()))


def _public_objects() -> list[tuple[str, object]]:
    return [(name, getattr(anyfork, name)) for name in PUBLIC]


def test_all_is_a_set_of_names() -> None:
    assert isinstance(anyfork.__all__, list)
    assert len(set(anyfork.__all__)) == len(anyfork.__all__), "a name is exported twice"
    assert all(n and not n.startswith("_") for n in anyfork.__all__)


@pytest.mark.parametrize("name", PUBLIC)
def test_every_name_resolves(name: str) -> None:
    obj = getattr(anyfork, name)
    assert obj is not None
    ns: dict[str, object] = {}
    exec(f"from anyfork import {name}", ns)
    assert ns[name] is obj


def test_all_matches_the_defining_modules() -> None:
    """Each public name comes from exactly one private module, and is in that module's
    ``__all__``: nothing is exported that its module does not mean to export."""
    by_module: dict[str, set[str]] = {}
    for mod_name in SOURCES:
        module = importlib.import_module(f"anyfork.{mod_name}")
        by_module[mod_name] = set(module.__all__)
        for name in module.__all__:
            assert getattr(module, name) is getattr(anyfork, name)
    everything = set().union(*by_module.values())
    assert everything == set(anyfork.__all__)
    assert sum(len(names) for names in by_module.values()) == len(everything), (
        "a name is in two modules' __all__"
    )


def test_static_view_matches_the_lazy_names() -> None:
    """The ``if TYPE_CHECKING:`` imports (what type checkers see) list exactly ``__all__``,
    each from the module the lazy loader uses."""
    tree = ast.parse(Path(anyfork.__file__).read_text())
    static: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name):
            if node.test.id != "TYPE_CHECKING":
                continue
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom), ast.dump(stmt)
                assert stmt.level == 1
                assert stmt.module is not None
                for alias in stmt.names:
                    # ``import X as X``: the explicit re-export form type checkers require.
                    assert alias.asname == alias.name, f"{alias.name} is not re-exported as itself"
                    static[alias.name] = stmt.module
    assert set(static) == set(anyfork.__all__)
    for name, mod_name in static.items():
        module = importlib.import_module(f"anyfork.{mod_name}")
        assert getattr(module, name) is getattr(anyfork, name)


@pytest.mark.parametrize("name", PUBLIC)
def test_nice_module_name(name: str) -> None:
    obj = getattr(anyfork, name)
    assert inspect.isclass(obj) or inspect.isfunction(obj), f"{name} is a {type(obj).__name__}"
    assert obj.__module__ == "anyfork", f"anyfork.{name}.__module__ is {obj.__module__!r}"
    assert "<" not in obj.__qualname__
    assert obj.__qualname__ == name


def test_nice_module_names_without_touching_the_root_names() -> None:
    """In a fresh interpreter: the public classes and functions say ``anyfork`` even when the
    program reaches them without ``anyfork.Name`` (an exception raised by ``new_exec``, the
    type of a returned ``Process``), as a traceback or ``repr`` would show them."""
    code = "\n".join(
        [
            "import sys, anyfork",
            "try:",
            "    anyfork.new_exec(python='/nonexistent/python')",
            "except Exception as exc:",
            "    print(type(exc).__module__, type(exc).__qualname__)",
            "import importlib",
            f"for source in {SOURCES!r}:",
            "    mod = importlib.import_module('anyfork.' + source)",
            "    for name in mod.__all__:",
            "        print(getattr(mod, name).__module__, name)",
        ]
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith(" SpawnError"), result.stdout
    wrong = [line for line in lines if not line.startswith("anyfork ")]
    assert not wrong, f"public objects with a private __module__: {wrong}"


def test_dir() -> None:
    listing = dir(anyfork)
    assert set(anyfork.__all__) <= set(listing)
    assert "__version__" in listing
    assert listing == sorted(listing)


def test_unknown_attribute() -> None:
    with pytest.raises(AttributeError, match=r"module 'anyfork' has no attribute 'no_such_name'"):
        anyfork.no_such_name  # noqa: B018
    assert not hasattr(anyfork, "Channel")  # internals are not reachable through the root
    with pytest.raises(ImportError, match="no_such_name"):
        exec("from anyfork import no_such_name", {})


def test_version() -> None:
    assert anyfork.__version__ == importlib.metadata.version("anyfork")


# -- docstrings ------------------------------------------------------------------------------


def _public_members(cls: type) -> list[str]:
    """Names the class itself defines that users call or read (no dunders, no privates)."""
    return [name for name in vars(cls) if not name.startswith("_")]


@pytest.mark.parametrize("name", PUBLIC)
def test_docstrings(name: str) -> None:
    obj = getattr(anyfork, name)
    doc = inspect.getdoc(obj)
    assert doc, f"anyfork.{name} has no docstring"
    assert doc.strip().splitlines()[0].strip(), f"anyfork.{name}: the first line is empty"
    if inspect.isclass(obj):
        missing = [m for m in _public_members(obj) if not inspect.getdoc(getattr(obj, m))]
        assert not missing, f"anyfork.{name} members without a docstring: {missing}"


def test_module_docstrings() -> None:
    assert inspect.getdoc(anyfork)
    assert inspect.getdoc(anyfork.worker)


def test_exceptions_form_one_tree() -> None:
    errors = [obj for _, obj in _public_objects() if inspect.isclass(obj)]
    errors = [cls for cls in errors if issubclass(cls, BaseException)]
    assert anyfork.AnyforkError in errors
    for cls in errors:
        if cls is anyfork.RemoteTraceback:  # a carrier for the child's traceback, never raised
            continue
        assert issubclass(cls, anyfork.AnyforkError), cls


# -- anyfork.worker --------------------------------------------------------------------------


def test_worker_all() -> None:
    names = anyfork.worker.__all__
    assert names
    assert len(set(names)) == len(names)
    for name in names:
        obj = getattr(anyfork.worker, name)
        assert callable(obj), name
        assert obj.__module__ == "anyfork.worker", name
        assert inspect.getdoc(obj), f"anyfork.worker.{name} has no docstring"
    public = {
        name
        for name, obj in vars(anyfork.worker).items()
        if not name.startswith("_") and getattr(obj, "__module__", None) == "anyfork.worker"
    }
    assert public == set(names), "anyfork.worker defines public names that __all__ omits"


def test_worker_take_args_outside_a_child() -> None:
    with pytest.raises(RuntimeError, match="only in an anyfork process"):
        anyfork.worker.take_args()
