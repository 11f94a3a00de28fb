"""Functions of the main script, run in children, in a program with the
``if __name__ == "__main__":`` guard.

Each child that needs one imports this script as ``__mp_main__`` (the guarded block does not
run there) and finds the function in it: given as a function object, as ``"__main__:name"`` or
as a bare name; through ``run``, asyncio ``run``, ``new_exec`` and a template that imported the
script once for all its children; pickled references to ``__main__`` objects resolve both ways.
Every import of the script appends ``<pid> <__name__>`` to ``$MAIN_IMPORTS``.  Prints one JSON
line.  (Also run as ``python -m mainpkg.prog``: ``mainpkg/prog.py`` runs this script's code.)
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import socket
import sys

import tmpl_funcs

import anyfork

with open(os.environ["MAIN_IMPORTS"], "a") as imports:
    imports.write(f"{os.getpid()} {__name__}\n")


class Point:
    """Pickled by reference (``__main__.Point`` here, ``__mp_main__.Point`` in a child)."""

    def __init__(self, x: int) -> None:
        self.x = x


def report(sock: socket.socket, *args: object) -> None:
    main = sys.modules["__main__"]
    sock.sendall(
        json.dumps(
            {
                "pid": os.getpid(),
                "ppid": os.getppid(),
                "name": __name__,
                "main_name": main.__name__,
                "main_is_mp_main": main is sys.modules.get("__mp_main__"),
                "argv": sys.argv[1:],
                # Pickled references to this script's objects resolve in the child, both the
                # one pickle makes here (__mp_main__.report) and one made in the parent
                # (__main__.report: protocol 0, spelled out).
                "pickled_here": pickle.loads(pickle.dumps(report)) is report,
                "pickled_as_main": pickle.loads(b"c__main__\nreport\n.") is report,
                "args": [str(a) for a in args],
            }
        ).encode()
    )


def send_point(sock: socket.socket) -> None:
    sock.sendall(pickle.dumps((os.getpid(), Point(7))))


def square(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


async def in_loop() -> list[dict[str, object]]:
    socks = [await anyfork.new().send_arg(f"a{i}").run(report, timeout=10) for i in range(2)]
    for sock in socks:
        sock.setblocking(True)
    return [tmpl_funcs.read_json(sock) for sock in socks]


def main() -> None:
    out: dict[str, object] = {"main_pid": os.getpid()}
    run = tmpl_funcs.read_json
    out["object"] = run(anyfork.new().run_blocking(report, timeout=10))
    out["string"] = run(anyfork.new().send_arg("s").run_blocking("__main__:report", timeout=10))
    out["bare"] = run(anyfork.new().run_blocking("report", timeout=10))
    out["async"] = asyncio.run(in_loop())
    out["exec"] = run(anyfork.new_exec().run_blocking(report, timeout=10))
    # A name eval() defined is found without importing the script.
    code = "def from_eval(sock):\n    import os\n    sock.sendall(str(os.getpid()).encode())\n"
    out["eval_pid"] = int(tmpl_funcs.read_all(anyfork.new().eval(code).run_blocking("from_eval")))
    # A template imports the script once; every child forked from it shares the import.
    with anyfork.new() as tmpl:
        ref = tmpl._prepare_func(report, now=True)
        out["template_pid"] = tmpl.wait_started_blocking(timeout=10)
        out["template_kids"] = [run(tmpl.fork().run_blocking(ref, timeout=10)) for _ in range(3)]
    # An object of this script, pickled in a child, loads here.
    data = tmpl_funcs.read_all(anyfork.new().run_blocking(send_point, timeout=10))
    out["point_pid"], point = pickle.loads(data)
    out["point"] = [type(point).__name__, point.x, isinstance(point, Point)]
    # The RPC layer finds the function the same way (Process.rpc prepares the worker), and a
    # pool's workers (forked from its template), and calls that carry it pickled.
    client = anyfork.new().rpc_blocking(square, timeout=10)
    out["rpc"], out["rpc_pid"] = client(12)
    client.close()
    with anyfork.PoolExecutor(max_workers=1) as executor:
        out["executor"], out["executor_pid"] = executor.submit(square, 5).result(timeout=20)
    tmpl_funcs.emit(out)


if __name__ == "__main__":
    main()
