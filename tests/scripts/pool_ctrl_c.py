"""Ctrl-C while a program waits for its pool: ``python pool_ctrl_c.py MODE``.

A pool of two workers runs two gated calls (``pool_funcs.gated``: each reports that it started,
then waits for a byte on a pipe this program never writes) and has two more queued.  The program
prints ``started <tag> <pid>`` as each call starts, then ``waiting``, and waits where MODE says;
the test sends SIGINT.  The ``KeyboardInterrupt`` must come out of that wait at once; the program
prints ``interrupted``, then how each call ended (``call <tag> <exception type>``), and ends.
The busy workers must be gone with it (the test checks their pids).

MODE: ``executor-result``, ``executor-map``, ``executor-shutdown``, ``executor-with``,
``blocking-call``, ``blocking-map``, ``pool-asyncio`` (``asyncio.run`` interrupted in
``async with Pool``), ``outside`` (the interrupt lands outside the pool, in a wait of the
program's own, and ends the program: its executor is closed the fast way at exit).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import sys
import threading
from typing import Any

import anyfork


def say(*words: object) -> None:
    sys.stdout.write(" ".join(map(str, words)) + "\n")
    sys.stdout.flush()


mode = sys.argv[1]
r, w = os.pipe()  # w is never written: the gated calls run until their worker is killed
tmpl = anyfork.new().require("pool_funcs").send_fh(r)
started = threading.Semaphore(0)


def on_event(kind: str, tag: Any, pid: int) -> None:
    say(kind, tag, pid)
    started.release()


def wait_started() -> None:
    for _ in range(2):
        assert started.acquire(timeout=30), "the calls did not start"


def waiting() -> None:
    """Said right before the wait (the test also waits until this thread sleeps in it)."""
    say("waiting")


def outcome(tag: str, fut: Any) -> None:
    """How a call ended (its worker's death is seen within moments of the kill)."""
    try:
        fut.result(30)
    except cf.CancelledError:
        say("call", tag, "cancelled")
    except BaseException as exc:
        say("call", tag, type(exc).__name__)
    else:
        say("call", tag, "ok")


def wait_started_then_waiting() -> None:
    wait_started()
    waiting()


options: dict[str, Any] = {"init": "pool_funcs:init_gate", "on_event": on_event}
futures: dict[str, Any] = {}
if mode == "outside":
    ex = anyfork.PoolExecutor(2, template=tmpl, func="pool_funcs:gated", **options)
    futures = {tag: ex.submit("pool_funcs:gated", tag) for tag in "abcd"}
    wait_started()
    waiting()
    threading.Event().wait()  # not the pool's: the KeyboardInterrupt ends the program
elif mode.startswith("executor"):
    ex = anyfork.PoolExecutor(2, template=tmpl, func="pool_funcs:gated", **options)
    if mode == "executor-map":
        results = ex.map("pool_funcs:gated", ["a", "b", "c", "d"], chunksize=1)
    else:
        futures = {tag: ex.submit("pool_funcs:gated", tag) for tag in "abcd"}
    wait_started()
    try:
        waiting()
        if mode == "executor-result":
            futures["a"].result()
        elif mode == "executor-map":
            list(results)
        elif mode == "executor-shutdown":
            ex.shutdown(wait=True)
        else:
            with ex:
                pass  # the block ends: __exit__ waits for the calls
    except KeyboardInterrupt:
        say("interrupted")
    for tag, fut in futures.items():
        outcome(tag, fut)
    ex.shutdown(wait=True)
elif mode.startswith("blocking"):
    pool = anyfork.BlockingPool(tmpl, "pool_funcs:gated", max=2, idle=2, load=1, **options)
    callers = cf.ThreadPoolExecutor(3, thread_name_prefix="caller")
    try:
        if mode == "blocking-call":
            futures = {tag: callers.submit(pool, tag) for tag in "abc"}
            wait_started()
            waiting()
            pool("d")  # queued: this thread waits for it
        else:
            results = pool.map(["a", "b", "c", "d"], chunksize=1)
            threading.Thread(target=wait_started_then_waiting, daemon=True).start()
            list(results)
    except KeyboardInterrupt:
        say("interrupted")
    callers.shutdown(wait=True)
    for tag, fut in futures.items():
        outcome(tag, fut)
    pool.close()
else:

    async def main() -> None:
        async with anyfork.Pool(tmpl, "pool_funcs:gated", max=2, idle=2, load=1, **options) as p:
            calls = [p(tag) for tag in "abcd"]
            await asyncio.get_running_loop().run_in_executor(None, wait_started)
            waiting()
            await asyncio.gather(*calls)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        say("interrupted")
tmpl.close()
say("closed")
