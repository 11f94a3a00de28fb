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


def _resolve(name: str) -> object:
    """``anyfork.<name>``, checked to be the object its defining module (``_LAZY``) holds under
    that name, and what ``from anyfork import <name>`` gives."""
    obj = getattr(anyfork, name)
    module = importlib.import_module(f"anyfork.{anyfork._LAZY[name]}")
    assert vars(module)[name] is obj, f"anyfork.{name} is not {module.__name__}.{name}"
    ns: dict[str, object] = {}
    exec(f"from anyfork import {name}", ns)
    assert ns[name] is obj
    return obj


@pytest.mark.parametrize("name", PUBLIC)
def test_every_name_resolves(name: str) -> None:
    assert inspect.isclass(_resolve(name)) or inspect.isfunction(_resolve(name))


def test_the_resolution_check_can_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name the lazy table sends to the wrong module, and one no module defines, fail it."""
    monkeypatch.delitem(vars(anyfork), "Pool", raising=False)  # (a cached lookup)
    monkeypatch.setitem(anyfork._LAZY, "Pool", "_errors")
    with pytest.raises(AttributeError, match="Pool"):
        _resolve("Pool")
    monkeypatch.delitem(vars(anyfork), "SpawnError", raising=False)
    monkeypatch.setattr(importlib.import_module("anyfork._errors"), "SpawnError", ValueError)
    monkeypatch.setitem(vars(anyfork), "SpawnError", KeyError)
    with pytest.raises(AssertionError, match=r"anyfork\.SpawnError is not anyfork\._errors"):
        _resolve("SpawnError")


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


# -- what users may construct, subclass and pass -------------------------------------------------

#: Classes users get from anyfork and never construct (``NoPublicConstructor``), nor subclass
#: (``@final``).
NO_PUBLIC_CONSTRUCTOR = {"Process"}
#: Those the RPC layer's rework makes so (the RPC engineer's part of issue 10): still
#: constructible today; move each to NO_PUBLIC_CONSTRUCTOR once it is not.
NO_PUBLIC_CONSTRUCTOR_PENDING = {"BlockingClient", "Client"}
#: Classes users construct: the pools, the errors (raised in tests, rebuilt by pickle), the
#: statistics record (built in tests), the serialiser protocol.
CONSTRUCTIBLE = {"BlockingPool", "Pool", "PoolExecutor", "PoolStatistics", "Serializer"} | {
    n for n in PUBLIC if n.endswith("Error") or n == "RemoteTraceback"
}


def test_every_public_class_is_classified() -> None:
    classes = {n for n in PUBLIC if inspect.isclass(getattr(anyfork, n))}
    groups = [NO_PUBLIC_CONSTRUCTOR, NO_PUBLIC_CONSTRUCTOR_PENDING, CONSTRUCTIBLE]
    assert set().union(*groups) == classes
    assert sum(map(len, groups)) == len(classes), "a class is in two groups"


@pytest.mark.parametrize("name", sorted(NO_PUBLIC_CONSTRUCTOR))
def test_classes_users_do_not_construct_cannot_be(name: str) -> None:
    cls = getattr(anyfork, name)
    with pytest.raises(TypeError, match=rf"^anyfork\.{name} has no public constructor$"):
        cls()
    with pytest.raises(TypeError, match="no public constructor"):
        cls(object(), pid=1)


@pytest.mark.parametrize("name", sorted(NO_PUBLIC_CONSTRUCTOR | NO_PUBLIC_CONSTRUCTOR_PENDING))
def test_final_where_promised(name: str) -> None:
    """``@typing.final`` on the class (type checkers refuse subclasses): read in the source,
    since Python 3.10's ``final`` leaves no mark on the class."""
    cls = getattr(anyfork, name)
    (node,) = [
        n
        for path in Path(anyfork.__file__).parent.rglob("*.py")
        for n in ast.parse(path.read_text()).body
        if isinstance(n, ast.ClassDef) and n.name == name
    ]
    decorators = [ast.unparse(d) for d in node.decorator_list]
    final = "final" in decorators or "typing.final" in decorators
    if name in NO_PUBLIC_CONSTRUCTOR_PENDING:
        assert not final, f"{name} is @final now: move it to NO_PUBLIC_CONSTRUCTOR"
        assert type(cls) is type, f"{name} has a metaclass now: move it to NO_PUBLIC_CONSTRUCTOR"
        return
    assert final, f"anyfork.{name} is not @final"
    if sys.version_info >= (3, 11):
        assert cls.__final__ is True


#: Public callables that take ``**kwargs``, each because it passes them on to the user's
#: function (a call in a worker).  Nothing else does: options are explicit keywords.
PASSES_USER_KWARGS = {
    "BlockingClient.__call__",
    "BlockingClient.call",
    "BlockingPool.__call__",
    "BlockingPool.call",
    "Client.__call__",
    "Client.call",
    "Pool.__call__",
    "Pool.call",
    "PoolExecutor.submit",
    "PoolExecutor.submit_with",
}
#: ``**options`` the RPC layer's rework makes explicit (the RPC engineer's part of issue 10);
#: the test fails once one is gone, to be removed from here.
UNTYPED_PENDING = {
    "BlockingClient.__init__",
    "Client.__init__",
    "Process.rpc",
    "Process.rpc_blocking",
}


def _public_callables() -> dict[str, object]:
    found: dict[str, object] = {}
    for name, obj in _public_objects():
        if inspect.isfunction(obj):
            found[name] = obj
        elif inspect.isclass(obj) and not issubclass(obj, BaseException):
            for member, value in vars(obj).items():
                # (anyfork's own methods: a Protocol's __init__ is typing's)
                ours = getattr(value, "__module__", "").startswith("anyfork")
                if ours and (member in ("__init__", "__call__") or not member.startswith("_")):
                    found[f"{name}.{member}"] = value
    return found


def test_no_catch_all_keywords_in_public_signatures() -> None:
    """Options are explicit, typed keywords (``inspect.signature`` shows them, type checkers
    check them): a ``**kwargs`` only where it is the user's function's keywords."""
    catch_all = set()
    for qualname, func in _public_callables().items():
        parameters = inspect.signature(func).parameters.values()  # type: ignore[arg-type]
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            catch_all.add(qualname)
    unexpected = catch_all - PASSES_USER_KWARGS - UNTYPED_PENDING
    assert not unexpected, f"public signatures with **kwargs: {sorted(unexpected)}"
    gone = UNTYPED_PENDING - catch_all
    assert not gone, f"explicit now (good): remove {sorted(gone)} from UNTYPED_PENDING"
    assert catch_all >= PASSES_USER_KWARGS


@pytest.mark.parametrize("name", ["Pool", "BlockingPool", "PoolExecutor"])
def test_pools_take_the_rpc_options_as_typed_keywords(name: str) -> None:
    parameters = inspect.signature(getattr(anyfork, name)).parameters
    rpc = inspect.signature(anyfork.rpc).parameters
    for option in ("backend", "serializer", "init", "done", "on_event", "concurrency", "timeout"):
        assert parameters[option].kind is inspect.Parameter.KEYWORD_ONLY
        assert parameters[option].annotation == rpc[option].annotation, option
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['processes'\]"):
        getattr(anyfork, name)(None, "mod:f", processes=2)


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
