"""The first ``anyfork.new()`` in a running event loop returns before the default template has
started, and the loop runs meanwhile.

``$ANYFORK_PYTHON`` is set to ``$GATE_PYTHON``, a wrapper (the test writes it) that waits for
a byte on the named pipe ``$GATE_PATH`` before it execs the interpreter: the default template
cannot start until a task of this loop has written that byte.  ``new()`` must return first (a
``new()`` that waited for its template would wait for ever: ``faulthandler`` ends the program
then, with the stack); the task runs; then ``run`` finds the process ready.  Prints one JSON
line: the order of events.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os

import tmpl_funcs

import anyfork

os.environ["ANYFORK_PYTHON"] = os.environ["GATE_PYTHON"]


async def main() -> list[str]:
    events: list[str] = []
    # Read and write: opening it neither waits for the wrapper here, nor there (a writer is in).
    write = os.open(os.environ["GATE_PATH"], os.O_RDWR)

    async def open_gate() -> None:
        events.append("task ran")
        os.write(write, b"go\n")

    try:
        proc = anyfork.new()  # the first: the default template is started for it
        events.append("new returned")
        task = asyncio.create_task(open_gate())
        sock = await proc.run("tmpl_funcs:report", timeout=20)
        events.append("ran")
        sock.setblocking(True)
        kid = tmpl_funcs.read_json(sock)
        events.append(f"child of a template: {kid['ppid'] != os.getpid()}")
        await task
    finally:
        os.close(write)
    return events


faulthandler.dump_traceback_later(20, exit=True)
tmpl_funcs.emit({"events": asyncio.run(main())})
