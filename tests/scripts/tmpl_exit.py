"""What a forked copy of the main program must not repeat: the program's atexit handlers and its
buffered stdout.

Usage: ``tmpl_exit.py {main,early} <log file>``.  The program registers an atexit handler that
logs its pid, writes a line to stdout without flushing, then makes a template and runs a worker
that prints without flushing and registers its own handler.  Prints one JSON line at the end.
"""

from __future__ import annotations

import atexit
import os
import socket
import sys

import tmpl_funcs

import anyfork

how, log = sys.argv[1:3]


def log_line(what: str) -> None:
    with open(log, "a") as f:
        f.write(f"{what} {os.getpid()}\n")


atexit.register(log_line, "main-handler")
# stdout is a pipe, so (without -u or PYTHONUNBUFFERED) this line sits in the buffer.
buffered = not (sys.stdout.line_buffering or getattr(sys.stdout, "write_through", True))
sys.stdout.write("buffered-before-template\n")


def worker(sock: socket.socket) -> None:
    # The worker's own handler runs when it exits; its prints are flushed once, by it.
    atexit.register(log_line, "worker-handler")
    print(f"worker-output {os.getpid()}")  # noqa: T201  # print, no flush: the point
    sock.sendall(str(os.getpid()).encode())


if how == "main":
    tmpl = anyfork.main_template()
    procs = [tmpl.fork(), tmpl.fork()]
else:
    tmpl = anyfork.start_early()
    procs = [anyfork.new(), anyfork.new_exec()]
workers = [int(tmpl_funcs.read_all(p.run_blocking("worker", timeout=10))) for p in procs]
tmpl_funcs.emit(
    {"main": os.getpid(), "template": tmpl.pid, "workers": workers, "buffered": buffered}
)
