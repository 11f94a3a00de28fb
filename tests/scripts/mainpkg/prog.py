"""Run as ``python -m mainpkg.prog``: a child finds ``report`` by importing this module by its
name (as ``__mp_main__``), not by a path.  Prints one JSON line."""

from __future__ import annotations

import json
import os
import socket
import sys

import tmpl_funcs

import anyfork


def report(sock: socket.socket) -> None:
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)
    facts = {"name": __name__, "spec": getattr(spec, "name", None), "pid": os.getpid()}
    sock.sendall(json.dumps(facts).encode())


if __name__ == "__main__":
    out: dict[str, object] = {"main_spec": getattr(__spec__, "name", None)}
    out["child"] = tmpl_funcs.read_json(anyfork.new().run_blocking(report, timeout=10))
    tmpl_funcs.emit(out)
