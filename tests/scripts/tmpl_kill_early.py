"""A SIGKILLed early template never makes anyone hang: each later call either fails at once with
``SpawnError`` or succeeds.  Records the outcome of every step as one JSON line:

1. ``new()`` straight after the kill (racing with the template's death);
2. once the death has been reaped: ``new()``, ``new_exec()``, ``new_exec(python=...)``;
3. ``start_early()`` again, then ``new()``.
"""

from __future__ import annotations

# ruff: noqa: I001  # the import order is the point: anyfork.early comes first
import anyfork.early

import os
import signal
import sys
import time
from collections.abc import Callable

import tmpl_funcs

import anyfork
from anyfork._core import _templates

early = anyfork.early.TEMPLATE
assert early.pid is not None
out: dict[str, object] = {"main_pid": os.getpid(), "early_pid": early.pid}


def attempt(make: Callable[[], anyfork.Process]) -> dict[str, object]:
    start = time.monotonic()
    try:
        sock = make().run_blocking("tmpl_funcs:report", timeout=10)
    except anyfork.SpawnError as exc:
        result: dict[str, object] = {"outcome": "SpawnError", "message": str(exc)}
    except Exception as exc:
        result = {"outcome": type(exc).__name__, "message": str(exc)}
    else:
        result = {"outcome": "ok", "child": tmpl_funcs.read_json(sock)}
    result["seconds"] = time.monotonic() - start
    return result


os.kill(early.pid, signal.SIGKILL)
out["racing_new"] = attempt(anyfork.new)
out["early_returncode"] = early.wait_blocking(timeout=10)
out["new"] = attempt(anyfork.new)
default = _templates._default
out["default_pid"] = default.pid if default is not None else None
out["new_exec"] = attempt(anyfork.new_exec)
out["new_exec_python"] = attempt(lambda: anyfork.new_exec(python=sys.executable))
again = anyfork.start_early()
out["again_pid"] = again.pid
out["again_new"] = attempt(anyfork.new)
tmpl_funcs.emit(out)
