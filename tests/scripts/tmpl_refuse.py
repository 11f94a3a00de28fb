"""``main_template``/``start_early``/``import anyfork.early`` refuse to fork a program that runs
threads or an event loop, and fork nothing; once the thread or loop is gone they work.

Usage: ``tmpl_refuse.py {thread,loop} {main,early,import}``.  Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
import threading
from collections.abc import Callable

import tmpl_funcs

import anyfork
from anyfork._core import _templates

situation, how = sys.argv[1:3]


def attempt() -> object:
    if how == "main":
        return anyfork.main_template()
    if how == "early":
        return anyfork.start_early()
    return importlib.import_module("anyfork.early")


def children() -> list[int]:
    with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as f:
        return [int(p) for p in f.read().split()]


def refused(call: Callable[[], object]) -> dict[str, object]:
    try:
        call()
    except RuntimeError as exc:
        return {"error": "RuntimeError", "message": str(exc), "children": children()}
    except BaseException as exc:
        return {"error": type(exc).__name__, "message": str(exc), "children": children()}
    return {"error": None, "message": None, "children": children()}


out: dict[str, object] = {}
if situation == "thread":
    stop = threading.Event()
    blocker = threading.Thread(target=stop.wait, name="blocker-thread")
    blocker.start()
    out["refusal"] = refused(attempt)
    stop.set()
    blocker.join(10)
else:

    async def inside_loop() -> dict[str, object]:
        return refused(attempt)

    out["refusal"] = asyncio.run(inside_loop())

out["early_set"] = _templates._early is not None
# Without the thread or the loop the same call succeeds: the refusal is about the moment.
tmpl = attempt()
proc = tmpl.TEMPLATE if how == "import" else tmpl  # type: ignore[attr-defined]
assert isinstance(proc, anyfork.Process)
out["later"] = tmpl_funcs.read_json(proc.fork().run_blocking("tmpl_funcs:report", timeout=10))
out["later_tmpl_pid"] = proc.pid
tmpl_funcs.emit(out)
