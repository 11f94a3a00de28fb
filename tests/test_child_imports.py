"""The child side stays cheap: what every template and worker imports (style guide §3.3).

``anyfork._child._serve``, ``anyfork._child._wire``, ``anyfork.worker`` and the lazy ``anyfork``
root must not pull in the parent side (asyncio, typing, dataclasses...): an exec'd child would
pay for each import at every start, and a template would carry it in every fork.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import anyfork
from helpers import modules_after, recv_all

SRC = str(Path(anyfork.__file__).resolve().parent.parent)

#: Never imported on the child side, not even by the socket a running function receives.
HEAVY = frozenset(
    {
        "asyncio",
        "typing",
        "dataclasses",
        "logging",
        "inspect",
        "concurrent",
        "threading",
        "anyfork._core._process",
        "anyfork._core._channel",
        "anyfork._errors",
        "anyfork._core._spawn",
        "anyfork._core._reaper",
    }
)
#: Also not imported by the command server itself.  ``socket`` costs about 6 ms, as much as
#: the interpreter's start; ``selectors`` and ``enum`` come with it.  Nor by an exec'd child on
#: its way to a function that does not import them (its socket is an
#: ``anyfork._child._sock.Socket``).
SERVER_HEAVY = HEAVY | {"socket", "selectors", "enum"}


def _top(names: set[str]) -> set[str]:
    """Module names with their parents: ``asyncio.events`` also counts as ``asyncio``."""
    return names | {n.partition(".")[0] for n in names}


@pytest.mark.parametrize(
    "statement",
    [
        "import anyfork",
        "import anyfork._child._wire",
        "import anyfork._child._serve, anyfork.worker",
        "import anyfork.worker; anyfork.__version__; dir(anyfork)",
        "import anyfork._child._target, anyfork._child._main",
    ],
)
def test_child_side_imports_are_cheap(statement: str) -> None:
    modules = modules_after(statement)
    assert "anyfork" in modules
    assert not _top(modules) & SERVER_HEAVY, (
        f"{statement!r} imported {_top(modules) & SERVER_HEAVY}"
    )


def test_the_socket_lookalike_stands_alone() -> None:
    """``_sock`` finds the socket module itself: no import of the command server (no cycle)."""
    modules = modules_after("from anyfork._child import _sock; _sock.Socket().family")
    assert "anyfork._child._serve" not in modules
    assert "anyfork._child._forking" not in modules


def test_public_name_loads_the_parent_side() -> None:
    """The converse, so the test above cannot pass by accident: the lazy root does load."""
    modules = modules_after("import anyfork; anyfork.Process")
    assert {"anyfork._core._process", "socket", "threading"} <= modules


def test_import_time_of_the_command_server(
    record_property: Callable[[str, object], None],
) -> None:
    """Logged, not asserted (timings are too noisy for CI)."""
    code = f"import sys; sys.path[:0] = [{SRC!r}]; import anyfork._child._serve"
    result = subprocess.run(
        [sys.executable, "-S", "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    match = re.search(
        r"^import time:\s*(\d+) \|\s*(\d+) \| anyfork\._child\._serve$", result.stderr, re.M
    )
    assert match is not None, result.stderr
    cumulative_us = int(match.group(2))
    record_property("import_anyfork_serve_us", cumulative_us)
    print(f"\nimport anyfork._child._serve: {cumulative_us} us cumulative")  # noqa: T201


# Defined in the child with eval(): a function in this module would make the child import
# this module, and with it pytest.
MODULES_REPORT = """
def modules_report(sock):
    import sys
    sock.sendall(repr(sorted(sys.modules)).encode())
"""


def _run_report(proc: anyfork.Process) -> set[str]:
    proc.eval(MODULES_REPORT)
    sock = proc.run_blocking("modules_report", timeout=10)
    try:
        data = recv_all(sock, timeout=10)
    finally:
        sock.close()
    modules: list[str] = ast.literal_eval(data.decode())
    return set(modules)


def test_exec_child_runs_without_parent_side_modules() -> None:
    # python= forces a real exec, even if another test has started an early template
    # (new_exec() would otherwise fork the early template, a copy of this pytest process).
    with anyfork.new_exec(python=sys.executable) as proc:
        modules = _run_report(proc)
    assert "anyfork._child._serve" in modules
    assert not _top(modules) & SERVER_HEAVY, f"the child imported {_top(modules) & SERVER_HEAVY}"


def test_forked_child_runs_without_parent_side_modules() -> None:
    """A child forked from an exec'd template is as light (the template's preloads included)."""
    with anyfork.new_exec(python=sys.executable) as template, template.fork() as proc:
        modules = _run_report(proc)
    assert "anyfork._child._serve" in modules
    assert not _top(modules) & HEAVY, f"the child imported {_top(modules) & HEAVY}"
