"""Templates and their children do not outlive the program.

Usage: ``tmpl_orphan.py {return,os_exit,sigkill}``.  Makes a main template, an early template, a
child of each that waits for commands and one that runs a function waiting for EOF; prints their
pids as one JSON line; then ends without closing anything, in the way asked.
"""

from __future__ import annotations

import os
import signal
import sys

import tmpl_funcs

import anyfork

how = sys.argv[1]

main_tmpl = anyfork.main_template()
early = anyfork.start_early()
idle = [main_tmpl.fork(), anyfork.new()]  # prepared, never run
running = [main_tmpl.fork(), anyfork.new()]
socks = [p.run_blocking("tmpl_funcs:wait_for_eof", timeout=10) for p in running]
pids = {
    "templates": [main_tmpl.pid, early.pid],
    "idle": [p.wait_started_blocking(timeout=10) for p in idle],
    "running": [p.pid for p in running],
}
tmpl_funcs.emit(pids)
if how == "os_exit":
    os._exit(0)
elif how == "sigkill":
    os.kill(os.getpid(), signal.SIGKILL)
