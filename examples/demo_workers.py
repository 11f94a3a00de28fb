"""Code that runs in the demo's worker processes.

It lives in its own module so that the children can import it by name: ``run(serve)`` sends
``"demo_workers:serve"``, and every child has the parent's ``sys.path``, whose first entry is this
directory when the demo runs as ``python examples/demo.py``.

Workers are plain blocking code: a forked worker is a clean, single-threaded process, free to use
whatever it likes.  Nothing here imports asyncio.
"""

from __future__ import annotations

import json
import os
import select
import socket
import sys


def serve(control: socket.socket, listener: socket.socket, worker_id: str) -> None:
    """A prefork echo server: accept connections on the shared ``listener`` and answer every
    line with ``"<worker_id> <pid> <line>"``.

    ``control`` is this worker's anyfork socket.  The worker sends nothing on it; the parent
    closes its end (EOF here) to ask the worker to stop.
    """
    # All workers wait on the same listening socket; when a client arrives they all wake up and
    # only one wins the accept.  Non-blocking accept lets the others shrug and wait again.
    listener.setblocking(False)
    prefix = f"{worker_id} {os.getpid()} ".encode()
    while True:
        readable, _, _ = select.select([control, listener], [], [])
        if control in readable and not control.recv(1):
            return  # EOF from the parent: stop (the process exits when this returns)
        if listener in readable:
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                continue  # another worker took this client
            with conn:
                _echo(conn, prefix)


def _echo(conn: socket.socket, prefix: bytes) -> None:
    conn.setblocking(True)
    conn.settimeout(10)  # a stuck client must not take the worker with it
    with conn.makefile("rb") as lines:
        for line in lines:
            conn.sendall(prefix + line)


def whoami(sock: socket.socket) -> None:
    """Report a few facts about this process, as JSON."""
    facts = {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "asyncio_imported": "asyncio" in sys.modules,
        "modules": len(sys.modules),
    }
    sock.sendall(json.dumps(facts).encode())


# -- RPC workers (section 7 of the demo) ----------------------------------------------------------


def crunch(label: str, steps: int) -> dict[str, object]:
    """Work in ``steps`` steps, streaming a progress event after each one, then return a result.

    Events and results reach the parent in the order they were produced, so the parent sees
    every progress event of this call before its result.
    """
    import anyfork.worker  # cheap: the child-side API only

    total = 0
    for i in range(steps):
        total += sum(range(10_000 * (i + 1)))  # a little real work per step
        anyfork.worker.event("progress", label, i + 1, steps)
    return {"label": label, "total": total, "pid": os.getpid()}


class InventoryError(Exception):
    """Raised in the worker; the parent re-raises it as this very type."""


def check_stock(item: str, wanted: int) -> int:
    stock = {"apples": 3, "pears": 0}
    have = stock.get(item, 0)
    if have < wanted:
        raise InventoryError(f"only {have} {item} left, {wanted} wanted")
    return have - wanted


def square(x: int) -> int:
    """The pool's function: trivial on purpose, so the demo shows the pool's own costs."""
    return x * x
