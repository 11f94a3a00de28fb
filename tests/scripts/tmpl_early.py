"""``import anyfork.early`` comes first: then ``new`` and ``new_exec`` fork from the early template
and nothing is ever exec'd.

Prints one JSON line: the early template's pid and what each child saw.
"""

# ruff: noqa: E402, I001  # the import order is the point: anyfork.early comes first

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket


def defined_before(sock: socket.socket, *args: object) -> None:
    """In ``__main__`` before the early template exists, so the template (a copy of the program
    at that moment) has it and children can run it by its bare name."""
    import tmpl_funcs

    tmpl_funcs.report(sock, "defined_before", *args)


import anyfork.early  # the first import of the program

import json
import os
import sys

import tmpl_funcs

import anyfork
from anyfork._core import _spawn, _templates


def defined_after(sock: socket.socket) -> None:
    """Defined after the template was forked: the template does not have it."""
    sock.sendall(b"unreachable")


def no_exec(python: str | None = None) -> tuple[socket.socket, int, bytes]:
    raise AssertionError("anyfork exec'd an interpreter although an early template exists")


_spawn.exec_server = no_exec  # any attempt to exec fails the script loudly

early = _templates._early
assert early is not None
assert early is anyfork.early.TEMPLATE
out: dict[str, object] = {"main": tmpl_funcs.facts(), "early_pid": early.pid}
assert early.pid is not None
out["early_ppid"] = tmpl_funcs.ppid_of(early.pid)

out["new"] = tmpl_funcs.read_json(anyfork.new().run_blocking("defined_before", timeout=10))
out["new_exec"] = tmpl_funcs.read_json(
    anyfork.new_exec().send_arg("x").run_blocking("defined_before", timeout=10)
)
out["by_module"] = tmpl_funcs.read_json(anyfork.new().run_blocking("tmpl_funcs:report", timeout=10))
# A function defined in ``__main__`` after the fork works once ``eval`` has defined it there.
proc = anyfork.new().eval("def late(sock):\n    import tmpl_funcs\n    tmpl_funcs.report(sock)\n")
out["eval"] = tmpl_funcs.read_json(proc.run_blocking("late", timeout=10))
try:
    anyfork.new().run_blocking("defined_after", timeout=10)
except AttributeError as exc:
    out["after_error"] = str(exc)
else:
    out["after_error"] = None
# Another early import or start_early() returns the same template.
out["same_again"] = anyfork.start_early() is early
out["imported_again"] = json.dumps(sorted(m for m in sys.modules if m.startswith("anyfork")))
out["main_pid"] = os.getpid()
tmpl_funcs.emit(out)
