"""Python 3.12+ warns (DeprecationWarning) when a program with threads calls ``os.fork``.  anyfork
never forks a threaded caller: ``new`` forks the default template (an exec'd, single-threaded
interpreter) and ``new_exec`` uses ``posix_spawn``.

Usage: ``python -W error::DeprecationWarning tmpl_threads_warn.py {anyfork,early,os.fork}``.
``early`` makes the early template before starting the thread (the supported way to combine the
two).  Records every warning raised while the thread runs and prints one JSON line.

``-W error`` alone cannot catch the fork warning: CPython swallows the exception it turns into
(the fork has happened by then), so the warnings are recorded instead.
"""

from __future__ import annotations

# ruff: noqa: E402  # the early template must exist before the thread starts
import sys

mode = sys.argv[1]
if mode == "early":
    import anyfork.early  # before the thread exists

import asyncio
import os
import threading
import warnings

import tmpl_funcs

stop = threading.Event()
blocker = threading.Thread(target=stop.wait, name="blocker")
blocker.start()
out: dict[str, object] = {"version": list(sys.version_info[:2]), "main_pid": os.getpid()}
children: list[dict[str, object]] = []
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    if mode == "os.fork":
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    else:
        import anyfork

        children.append(
            tmpl_funcs.read_json(anyfork.new().run_blocking("tmpl_funcs:report", timeout=10))
        )
        children.append(
            tmpl_funcs.read_json(anyfork.new_exec().run_blocking("tmpl_funcs:report", timeout=10))
        )

        async def main() -> dict[str, object]:
            sock = await anyfork.new().run("tmpl_funcs:report", timeout=10)
            return tmpl_funcs.read_json(sock)

        children.append(asyncio.run(main()))
    out["threads_during"] = threading.active_count()
stop.set()
blocker.join(10)
out["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
out["children"] = children
tmpl_funcs.emit(out)
