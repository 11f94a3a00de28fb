"""Ctrl-C in ``BlockingPool.map``: ``python pool_interrupt.py``.

The pool's one worker runs gated calls (``pool_funcs.gated``: it reports that it started, then
waits for a byte on a pipe this program holds).  The program prints ``started <tag> <pid>`` for
each call that starts; the test sends SIGINT once the first has.  The interrupt must arrive as
``KeyboardInterrupt`` out of the ``for`` loop; the program then opens the gate and makes one
more call, which must succeed (the pool stays usable), and closes the pool.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import anyfork


def say(*words: object) -> None:
    sys.stdout.write(" ".join(map(str, words)) + "\n")
    sys.stdout.flush()


r, w = os.pipe()
tmpl = anyfork.new().require("pool_funcs").send_fh(r)


def on_event(kind: str, tag: Any, pid: int) -> None:
    say(kind, tag, pid)


with anyfork.BlockingPool(
    tmpl, "pool_funcs:gated", init="pool_funcs:init_gate", on_event=on_event, max=1, load=1
) as pool:
    try:
        for result in pool.map(range(5), chunksize=1):
            say("result", result)
    except KeyboardInterrupt:
        say("interrupted")
    os.write(w, b"xx")  # the call left running (if a worker's thread ran it), and the next one
    say("after", pool("after")[0])
tmpl.close()
say("closed")
