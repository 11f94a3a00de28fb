"""``wait()`` for a main-program template (``main``) or the early template (``early``) and their
children: one exits normally, one with status 3, one is killed; then the template is closed and
waited for (a direct child of the program).  Prints one JSON line."""

from __future__ import annotations

import socket
import sys

import tmpl_funcs

import anyfork


def exit_3(sock: socket.socket) -> None:
    raise SystemExit(3)


tmpl = anyfork.main_template() if sys.argv[1] == "main" else anyfork.start_early()
children: dict[str, int] = {}
fork = tmpl.fork if sys.argv[1] == "main" else anyfork.new
normal = fork()
tmpl_funcs.read_all(normal.run_blocking("tmpl_funcs:report", timeout=10))
children["normal exit"] = normal.wait_blocking(timeout=10)
failing = fork()
failing.run_blocking(exit_3, timeout=10).close()
children["exit status 3"] = failing.wait_blocking(timeout=10)
killed = fork()
sock = killed.run_blocking("tmpl_funcs:wait_for_eof", timeout=10)
killed.kill()
children["killed"] = killed.wait_blocking(timeout=10)
sock.close()
tmpl.close()
out = {"children": children, "template": tmpl.wait_blocking(timeout=10)}
out["template_returncode"] = tmpl.returncode
tmpl_funcs.emit(out)
