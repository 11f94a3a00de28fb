"""The layering rules the root docstring states (``anyfork/__init__.py``), each a test that fails
when the rule is broken: what the child side may import, what the process core and the sans-IO
modules may not, the order of the layers, no import cycle, and no reach-in into another
subpackage's privates.

The import rules read the source (``ast``): every import counts, at module level or in a
function, except those under ``if TYPE_CHECKING:`` (type checkers only).  The "at import time"
rules follow module-level imports through anyfork's own modules, and are also checked on
``sys.modules`` in a fresh interpreter, as a real child would load them.
"""

from __future__ import annotations

import ast
import functools
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

import anyfork
from anyfork._rpc._connection import Backend
from helpers import modules_after

PACKAGE = Path(anyfork.__file__).resolve().parent

#: The modules that must stay sans-IO: no sockets, no clocks, no event loop, no threads, no
#: processes (each takes its inputs as arguments and returns what to do).  List new ones here.
SANS_IO = (
    "anyfork._child._rpc_wire",
    "anyfork._child._wire",
    "anyfork._child._records",
    "anyfork._pool._core",
    "anyfork._pool._policy",
    "anyfork._rpc._answers",
    "anyfork._rpc._batching",
    "anyfork._rpc._connection",
    "anyfork._rpc._map",
    "anyfork._rpc._outbox",
)
#: What a sans-IO module may not import, directly or through anyfork's modules.
IO = frozenset(
    {
        "_signal",
        "_socket",
        "_thread",
        "asyncio",
        "os",
        "select",
        "selectors",
        "signal",
        "socket",
        "subprocess",
        "threading",
        "time",
    }
)

#: The stdlib modules the child side (every template and worker) may import, at module level or
#: on a path that needs them: cheap, and no event loop, no typing machinery.
CHILD_STDLIB = frozenset(
    {
        "__future__",
        "_signal",
        "_socket",
        "_struct",
        "_weakref",
        "atexit",
        "collections",
        "fcntl",
        "gc",
        "importlib",
        "itertools",  # builtin (C): a batch's repeated columns
        "json",
        "operator",  # builtin (C): a batch's identity check
        "os",
        "pickle",
        "select",
        "socket",  # only when a function is handed a socket.socket, or setproctitle's fallback
        "struct",
        "sys",
        "traceback",  # the error path
    }
)
#: The codecs a user picks with ``serializer=``: imported only when picked.
OPTIONAL_CODECS = frozenset({"cloudpickle", "msgpack"})
#: The async backend (``rpc(backend="async")``) is an asyncio program: it is loaded only by
#: workers that asked for it (``_rpc_server.serve`` imports it lazily).
ASYNC_BACKEND = "anyfork._child._rpc_async"
ASYNCIO = frozenset({"asyncio", "contextvars", "inspect"})
#: Modules the child side may import beyond ``CHILD_STDLIB``, and why.
CHILD_EXTRA = {
    ASYNC_BACKEND: ASYNCIO,
    "anyfork._child._rpc_server": frozenset({"asyncio"}),  # serve(): runs the async backend
    # multiprocessing's authkey, for Manager proxies: only in a pool's worker, when the parent
    # has loaded multiprocessing.managers.
    "anyfork._pool._in_worker": frozenset({"multiprocessing"}),
}
#: Never on the child side at import time (the cheap-import rule of style guide §3.3).
HEAVY = frozenset(
    {"asyncio", "typing", "dataclasses", "logging", "inspect", "concurrent", "threading"}
)

#: Function-level imports that point up the layers, each a documented lazy forwarder: the
#: import graph is acyclic without them, and each loads its target only when used.
LAZY_FORWARDERS = {
    ("anyfork._core._process", "anyfork._rpc._start"): (
        "Process.rpc()/rpc_blocking(): the method spelling of anyfork.rpc(); the RPC layer (and "
        "asyncio) load only when a process becomes a worker"
    ),
    ("anyfork._child._rpc_server", "anyfork._child._rpc_async"): (
        "serve(): the async backend (and asyncio) load only in workers that asked for it"
    ),
}

#: Reach-ins that remain, each ``(module, expression)``: whose they are, and why.  The list
#: only shrinks: an entry that no longer occurs fails ``test_no_stale_reach_in_allowance``.
REACH_INS = {
    # Not ours: concurrent.futures.Future's state (the lock-free done check of a batch).
    ("anyfork._pool._futures", "fut._state"): "stdlib: concurrent.futures.Future._state",
}

#: The layers, lowest first: a module imports only from its own layer or lower ones.
LAYERS = (
    ("child side", ("anyfork", "anyfork.worker", "anyfork._child")),
    ("base", ("anyfork._util", "anyfork._errors")),
    ("process core", ("anyfork._core",)),
    ("RPC", ("anyfork._rpc",)),
    ("pool", ("anyfork._pool",)),
    ("early", ("anyfork.early",)),
    ("remote", ("anyfork.remote",)),
    ("integrations", ("anyfork.joblib",)),
)
SUBPACKAGES = ("_child", "_core", "_rpc", "_pool", "remote")


class Import(NamedTuple):
    source: str  # the importing module
    target: str  # the imported module: anyfork's own resolved to the module, else as written
    names: tuple[str, ...]  # what ``from target import ...`` takes (empty for ``import x``)
    function: str | None  # the enclosing function, None at module level
    line: int


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@functools.cache
def _tree(module: str) -> ast.Module:
    return ast.parse(_modules()[module].read_text(), str(_modules()[module]))


def _is_type_checking(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Name)
        and node.test.id == "TYPE_CHECKING"
    )


@functools.cache
def _imports(module: str) -> tuple[Import, ...]:
    """Every import of ``module`` that runs (``if TYPE_CHECKING:`` blocks left out)."""
    return _imports_in(module, _tree(module))


def _imports_in(module: str, tree: ast.Module) -> tuple[Import, ...]:
    path = _modules().get(module)
    package = (
        module if path is not None and path.name == "__init__.py" else module.rpartition(".")[0]
    )
    found: list[Import] = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                assert isinstance(child, ast.If)
                for stmt in child.orelse:
                    visit_one(stmt, function)
                continue
            visit_one(child, function)

    def visit_one(node: ast.AST, function: str | None) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        if isinstance(node, ast.Import):
            found.extend(Import(module, a.name, (), function, node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            plain = tuple(a.name for a in node.names if f"{target}.{a.name}" not in _modules())
            if plain or not node.names:
                found.append(Import(module, target, plain, function, node.lineno))
            submodules = [f"{target}.{a.name}" for a in node.names]  # ``from . import _wire``
            found.extend(
                Import(module, sub, (), function, node.lineno)
                for sub in submodules
                if sub in _modules()
            )
        visit(node, function)

    visit(tree, None)
    return tuple(found)


def _ours(name: str) -> bool:
    return name == "anyfork" or name.startswith("anyfork.")


def _top(name: str) -> str:
    return name.partition(".")[0]


def _loaded_at_import(module: str) -> dict[str, list[str]]:
    """What importing ``module`` loads: each module-level import, through anyfork's own modules
    (their parent packages included), with the chain that leads to it."""
    chains: dict[str, list[str]] = {}
    todo = [(module, [module])]
    seen = {module}
    while todo:
        current, chain = todo.pop()
        parents = [current.rsplit(".", n)[0] for n in range(1, current.count(".") + 1)]
        for imp in _imports(current):
            if imp.function is not None:
                continue
            chains.setdefault(imp.target, [*chain, imp.target])
        for target in [*parents, *(i.target for i in _imports(current) if i.function is None)]:
            if _ours(target) and target in _modules() and target not in seen:
                seen.add(target)
                todo.append((target, [*chain, target]))
    return chains


def _child_side() -> list[str]:
    return [
        m
        for m in _modules()
        if m in ("anyfork", "anyfork.worker") or m.startswith("anyfork._child")
    ] + ["anyfork._pool._in_worker"]  # runs in pool workers (its imports are lazy)


def _layer(module: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        # (the root "anyfork" is a layer of its own module only, not of everything under it)
        if any(module == p or (p != "anyfork" and module.startswith(p + ".")) for p in prefixes):
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


# -- the child side ------------------------------------------------------------------------------


@pytest.mark.parametrize("module", _child_side())
def test_child_side_imports_only_the_stdlib_and_itself(module: str) -> None:
    """Every import on the child side is a cheap stdlib module, a codec the user picked, or
    the child side itself (``_child``, the lazy root, ``anyfork.worker``)."""
    allowed = CHILD_STDLIB | CHILD_EXTRA.get(module, frozenset())
    child_side = set(_child_side())
    wrong = []
    for imp in _imports(module):
        if _ours(imp.target):
            ok = imp.target in child_side
        elif _top(imp.target) in OPTIONAL_CODECS:
            ok = imp.function is not None
        else:
            ok = _top(imp.target) in allowed
        if not ok:
            wrong.append(f"line {imp.line}: {imp.target} (in {imp.function or 'the module'})")
    assert not wrong, f"{module} imports what the child side may not: {wrong}"


@pytest.mark.parametrize("module", _child_side())
def test_child_side_loads_nothing_heavy_at_import_time(module: str) -> None:
    heavy = HEAVY - (ASYNCIO if module == ASYNC_BACKEND else frozenset())
    loaded = _loaded_at_import(module)
    wrong = {name: chain for name, chain in loaded.items() if _top(name) in heavy}
    assert not wrong, f"importing {module} loads {wrong}"


def test_child_side_modules_load_nothing_heavy() -> None:
    """The same, as a fresh interpreter sees it (every child module but the async backend)."""
    imports = [m for m in _child_side() if m != ASYNC_BACKEND]
    modules = modules_after("import " + ", ".join(imports))
    assert set(imports) <= modules
    assert not {_top(m) for m in modules} & HEAVY, sorted({_top(m) for m in modules} & HEAVY)


# Defined in the worker with eval(): a function of this module would make it import pytest.
REPORT = """
import sys


class Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("not this one")


def report(what):
    if what == "modules":
        return sorted(sys.modules)
    if what == "unencodable":
        return lambda: None
    raise Unpicklable("raised")
"""


@pytest.mark.parametrize("backend", ["sync", "async"])
def test_a_worker_whose_calls_fail_loads_nothing_heavy(backend: Backend) -> None:
    """A real (exec'd) worker that failed to encode a result and raised an exception that
    does not pickle reports what it has loaded: the error paths load nothing of the parent
    side (once, such a worker had loaded ``typing`` and ``signal`` through ``_errors``)."""
    proc = anyfork.new_exec(python=sys.executable).eval(REPORT)
    with proc.rpc_blocking("report", backend=backend, timeout=30) as client:
        before = set(client.call("modules", timeout=30))
        with pytest.raises(anyfork.EncodeError):
            client.call("unencodable", timeout=30)
        with pytest.raises(anyfork.RemoteError, match="raised"):
            client.call("raise", timeout=30)
        after = set(client.call("modules", timeout=30))
    assert "anyfork._child._rpc_server" in after
    heavy = HEAVY | {"signal", "anyfork._errors", "anyfork._util"}
    new = {_top(m) for m in after - before} | (after - before)
    assert not new & heavy, f"the error paths loaded {sorted(new & heavy)}"
    if backend == "sync":  # (the async backend runs asyncio, which loads typing and more)
        assert not {_top(m) for m in after} & heavy, sorted({_top(m) for m in after} & heavy)


# -- the process core and the sans-IO modules ----------------------------------------------------


def _core_modules() -> list[str]:
    return [m for m in _modules() if m.startswith("anyfork._core")]


@pytest.mark.parametrize("module", _core_modules())
def test_core_loads_no_asyncio_at_import_time(module: str) -> None:
    loaded = _loaded_at_import(module)
    assert "asyncio" not in {_top(m) for m in loaded}, loaded.get("asyncio")


def test_core_loads_no_asyncio_in_a_fresh_interpreter() -> None:
    modules = modules_after("import " + ", ".join(_core_modules()))
    assert set(_core_modules()) <= modules
    assert "asyncio" not in modules


@pytest.mark.parametrize("module", SANS_IO)
def test_sans_io_modules_import_no_io(module: str) -> None:
    """No I/O, clock, event loop, thread or signal in a sans-IO module (not even a lazy
    import), nor in what importing it loads."""
    assert module in _modules(), f"SANS_IO names {module}, which does not exist"
    wrong = [f"line {i.line}: {i.target}" for i in _imports(module) if _top(i.target) in IO]
    wrong += [
        " -> ".join(chain) for name, chain in _loaded_at_import(module).items() if _top(name) in IO
    ]
    assert not wrong, f"{module} reaches I/O: {wrong}"


# -- the shape of the import graph ---------------------------------------------------------------


def _graph() -> dict[str, set[str]]:
    """anyfork's module-level and function-level imports of its own modules, without the lazy
    forwarders (and without ``TYPE_CHECKING`` blocks)."""
    graph: dict[str, set[str]] = {}
    for module in _modules():
        graph[module] = {
            imp.target
            for imp in _imports(module)
            if _ours(imp.target)
            and imp.target in _modules()
            and imp.target != module
            and (module, imp.target) not in LAZY_FORWARDERS
        }
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph.get(node, ())):
            cycle = visit(target)
            if cycle:
                return cycle
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        cycle = visit(node)
        if cycle:
            return cycle
    return None


def test_no_import_cycle() -> None:
    cycle = _find_cycle(_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_check_can_fail() -> None:
    graph = _graph()
    graph["anyfork._child._wire"] = graph["anyfork._child._wire"] | {"anyfork._core._channel"}
    assert _find_cycle(graph) is not None


def test_lazy_forwarders_are_lazy_and_exist() -> None:
    """Each allowed forwarder is still there (else drop it from LAZY_FORWARDERS), and only
    inside functions: at module level it would be a real cycle."""
    for source, target in LAZY_FORWARDERS:
        uses = [imp for imp in _imports(source) if imp.target == target]
        assert uses, f"{source} no longer imports {target}: drop it from LAZY_FORWARDERS"
        assert all(imp.function is not None for imp in uses), uses


def test_layers_import_only_downwards() -> None:
    """child side < base (_util, _errors) < _core < _rpc < _pool < early: a module imports its
    own layer or lower ones (the lazy forwarders apart)."""
    wrong = [
        f"{module} ({LAYERS[_layer(module)][0]}) -> {target} ({LAYERS[_layer(target)][0]})"
        for module, targets in _graph().items()
        for target in targets
        if _layer(target) > _layer(module)
    ]
    assert not wrong, wrong


def test_every_subpackage_is_described_at_the_package_top() -> None:
    doc = anyfork.__doc__ or ""
    for name in SUBPACKAGES:
        assert f"{name}/" in doc, f"the root docstring does not describe {name}/"
    on_disk = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert on_disk == set(SUBPACKAGES)


# -- reach-ins ------------------------------------------------------------------------------------


def _group(module: str) -> str:
    """The subpackage of a module (``_core``...), or the module itself for the root modules."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in SUBPACKAGES else module


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


@functools.cache
def _private_attributes() -> dict[str, frozenset[str]]:
    """Each private attribute name a class of anyfork defines (methods, class attributes,
    ``self._x = ...``), with the groups whose classes define it."""
    owners: dict[str, set[str]] = {}
    for module in _modules():
        for cls in ast.walk(_tree(module)):
            if not isinstance(cls, ast.ClassDef):
                continue
            for node in ast.walk(cls):
                names: list[str] = []
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names.append(node.name)
                elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                    if isinstance(node.value, ast.Name) and node.value.id == "self":
                        names.append(node.attr)
                elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    names += [t.id for t in targets if isinstance(t, ast.Name)]
                for name in names:
                    if _private(name):
                        owners.setdefault(name, set()).add(_group(module))
    return {name: frozenset(groups) for name, groups in owners.items()}


def _reach_ins(module: str, tree: ast.Module) -> set[tuple[str, str]]:
    """``obj._x`` where only classes of other groups define ``_x`` (``self``, ``cls`` and
    ``super()`` apart), and ``mod._x`` of another group's module."""
    group = _group(module)
    owners = _private_attributes()
    modules = {  # the names anyfork's modules are bound to here (``from .. import _reaper``)
        imp.target.rpartition(".")[2]: imp.target
        for imp in _imports_in(module, tree)
        if _ours(imp.target) and imp.target in _modules()
    }
    found = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and _private(node.attr)):
            continue
        value = node.value
        if isinstance(value, ast.Name) and value.id in ("self", "cls"):
            continue
        if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "super":
            continue
        if isinstance(value, ast.Name) and value.id in modules:
            if _group(modules[value.id]) != group:
                found.add((module, ast.unparse(node)))
            continue
        if node.attr in CONSTRUCTORS:
            # ``Cls._create(...)``: anyfork's own constructor of a NoPublicConstructor class,
            # for the class's own subpackage only.
            if isinstance(value, ast.Name) and group not in _classes().get(value.id, {group}):
                found.add((module, ast.unparse(node)))
            continue
        defined_by = owners.get(node.attr, frozenset())
        if defined_by and group not in defined_by:
            found.add((module, ast.unparse(node)))
    return found


#: What ``_util.NoPublicConstructor`` gives its classes.
CONSTRUCTORS = frozenset({"_create"})


@functools.cache
def _classes() -> dict[str, frozenset[str]]:
    """Each class name anyfork defines, with the groups that define one of that name."""
    groups: dict[str, set[str]] = {}
    for module in _modules():
        for node in ast.walk(_tree(module)):
            if isinstance(node, ast.ClassDef):
                groups.setdefault(node.name, set()).add(_group(module))
    return {name: frozenset(found) for name, found in groups.items()}


def _all_reach_ins() -> set[tuple[str, str]]:
    return {r for module in _modules() for r in _reach_ins(module, _tree(module))}


def test_no_reach_in_across_subpackages() -> None:
    """No module touches the privates of another subpackage's objects or modules, but the
    allowed ones (``REACH_INS``, which should end empty)."""
    new = sorted(_all_reach_ins() - set(REACH_INS))
    assert not new, f"reach-ins into another subpackage's privates: {new}"


def test_no_stale_reach_in_allowance() -> None:
    stale = sorted(set(REACH_INS) - _all_reach_ins())
    assert not stale, f"gone (good): remove these from REACH_INS: {stale}"


def test_the_reach_in_check_can_fail() -> None:
    code = "from .._core import _reaper\n\ndef f(proc):\n    return proc._chan, _reaper._x\n"
    code += "\n\nProcess._create(1)\n"
    found = _reach_ins("anyfork._pool._aio", ast.parse(code))
    assert found == {
        ("anyfork._pool._aio", "proc._chan"),
        ("anyfork._pool._aio", "_reaper._x"),
        ("anyfork._pool._aio", "Process._create"),
    }
    # The same within the subpackage that defines them is no reach-in.
    inside = code.replace("from .._core import", "from . import")
    assert _reach_ins("anyfork._core._lineage", ast.parse(inside)) == set()


def test_process_has_no_subclass() -> None:
    """``Process`` is final: what differs for a remote process is its transport
    (``_core._transport.Transport``), not a subclass of it."""
    subclasses = [
        (module, node.name)
        for module in _modules()
        for node in ast.walk(_tree(module))
        if isinstance(node, ast.ClassDef)
        and any(
            getattr(base, "id", getattr(base, "attr", None)) == "Process" for base in node.bases
        )
    ]
    assert subclasses == []
