"""``main_template()`` after importing a module and defining worker functions: the children have
the module already (not imported again) and run ``__main__`` functions by their bare name, both
through the blocking and the asyncio API.  Prints one JSON line."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys

import tmpl_counted
import tmpl_funcs

import anyfork

CONFIG = {"set_up_by": os.getpid()}  # program state the workers inherit


def worker(sock: socket.socket, *args: object) -> None:
    counted = sys.modules.get("tmpl_counted")
    facts = tmpl_funcs.facts()
    facts.update(
        args=[str(a) for a in args],
        counted_imported_by=getattr(counted, "IMPORTED_BY", None),
        table_ok=counted is not None and counted.TABLE[12] == 144,
        config=CONFIG,
        main_name=sys.modules["__main__"].__name__,
    )
    sock.sendall(json.dumps(facts).encode())


tmpl = anyfork.main_template()
out: dict[str, object] = {"main_pid": os.getpid(), "tmpl_pid_at_once": tmpl.pid}
assert tmpl.pid is not None
out["tmpl_ppid"] = tmpl_funcs.ppid_of(tmpl.pid)
out["counted_here"] = tmpl_counted.IMPORTED_BY

out["blocking"] = [
    tmpl_funcs.read_json(tmpl.fork().send_arg(str(i)).run_blocking("worker", timeout=10))
    for i in range(2)
]


async def main() -> list[dict[str, object]]:
    # The template was made before the loop started, which is the point; using it inside the
    # loop is fine (it is a separate, single-threaded process).
    socks = await asyncio.gather(*(tmpl.fork().send_arg(f"a{i}").run(worker) for i in range(3)))
    return [tmpl_funcs.read_json(s) for s in socks]


out["async"] = asyncio.run(main())
tmpl.close()
tmpl_funcs.emit(out)
