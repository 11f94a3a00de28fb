"""A program that never shuts its pool down: ``python pool_left_open.py {executor,blocking} FILE``.

``executor``: a ``PoolExecutor`` with one worker gets a first call (waited for, so the worker's
pid is known) and 20 more it never waits for; the program ends there.  ``blocking``: a
``BlockingPool`` with one worker gets a first call, then 20 more from 20 (non-daemon) threads
of the program, which the main thread does not wait for: once they are all made (one running,
the others queued: each waits for a byte on a pipe), it writes the bytes and ends.  Each call
appends its number to FILE.  Prints the worker's pid.

As with the standard library's executors, the program must exit (at once, exit status 0, nothing
on stderr) and the calls still queued must run first; no worker may outlive it.
"""

from __future__ import annotations

import os
import sys
import threading

import anyfork


def say(*words: object) -> None:
    sys.stdout.write(" ".join(map(str, words)) + "\n")
    sys.stdout.flush()


mode, path = sys.argv[1], sys.argv[2]
if mode == "executor":
    ex = anyfork.PoolExecutor(1, func="pool_funcs:record", idle=1, load=1)
    ex.submit("pool_funcs:record", path, 0).result(30)
    say(ex.worker_pids()[0])
    for i in range(1, 21):
        ex.submit("pool_funcs:record", path, i)
else:
    r, w = os.pipe()
    tmpl = anyfork.new().require("pool_funcs").send_fh(r)
    pool = anyfork.BlockingPool(
        tmpl, "pool_funcs:gated_record", init="pool_funcs:init_gate", max=1, idle=1, load=1
    )
    os.write(w, b"x")
    pool(path, 0)
    say(pool.worker_pids()[0])
    for i in range(1, 21):
        threading.Thread(target=pool, args=(path, i), name=f"caller-{i}").start()
    pool.wait_until(lambda s: s.busy == 1 and s.queued == 19, timeout=30)
    os.write(w, b"x" * 20)  # and end: the calls are still running or queued
