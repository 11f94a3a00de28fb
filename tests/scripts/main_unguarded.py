"""A main script without the ``if __name__ == "__main__":`` guard, whose top level starts
processes (``sync``) or runs an event loop that does (``async``).

A child that imports it for a function runs its top level only up to the first anyfork call,
which stops the import (``StopMainImport``): functions defined above that line are found, those
below are not, and nothing recurses.  Every import of the script appends ``<pid> <__name__>``
to ``$MAIN_IMPORTS``.  Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys

import tmpl_funcs

import anyfork

with open(os.environ["MAIN_IMPORTS"], "a") as imports:
    imports.write(f"{os.getpid()} {__name__}\n")


def before(sock: socket.socket) -> None:
    sock.sendall(json.dumps({"name": __name__, "pid": os.getpid()}).encode())


async def first_in_loop() -> dict[str, object]:
    sock = await anyfork.new().run(before, timeout=10)  # FIRST ANYFORK CALL (async)
    sock.setblocking(True)
    return tmpl_funcs.read_json(sock)


out: dict[str, object] = {"main_pid": os.getpid(), "mode": sys.argv[1]}
if sys.argv[1] == "async":
    out["before"] = asyncio.run(first_in_loop())
else:
    out["before"] = tmpl_funcs.read_json(anyfork.new().run_blocking(before))  # FIRST ANYFORK CALL


def after(sock: socket.socket) -> None:
    sock.sendall(b"unreachable in a child")


try:
    anyfork.new().run_blocking(after, timeout=10)
except AttributeError as exc:
    out["after_error"] = str(exc)
    out["after_error_types"] = [t.__name__ for t in type(exc).__mro__]
tmpl_funcs.emit(out)
