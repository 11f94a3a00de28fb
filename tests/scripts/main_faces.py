"""A function of the main script through every face that calls functions in workers:
``anyfork.rpc`` and ``rpc_blocking`` (given a process), ``anyfork.Pool``, ``BlockingPool``,
``PoolExecutor.submit`` and ``.map``; and a lambda through each, whose error names the ways out.

``python main_faces.py guarded``: the calls run under the ``if __name__ == "__main__":`` guard.
``python main_faces.py unguarded``: they run at the top level, after the function's definition
(a worker importing the script stops at the first anyfork call, above which ``square`` is
defined).  Also run as ``python -c`` (the source of this file, ``$FACES_MODE`` the mode): a main
module without a file, where every face fails with the error that names the ways out.  Prints
one JSON line: for each face, the results and worker pids, or the error.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from typing import Any

import tmpl_funcs

import anyfork


def square(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def attempt(out: dict[str, Any], face: str, call: Callable[[], object]) -> None:
    """``out[face]``: what ``call()`` returned, or its error's types and message."""
    try:
        out[face] = call()
    except Exception as exc:  # (StopMainImport, a BaseException, must stop a worker's import)
        out[face] = {"error": str(exc), "types": [t.__name__ for t in type(exc).__mro__]}


async def in_loop(func: Callable[..., Any], out: dict[str, Any], tag: str) -> None:
    async def rpc() -> object:
        client = await anyfork.rpc(anyfork.new(), func, timeout=20)
        try:
            return await client(3)
        finally:
            await client.aclose()

    async def pool() -> object:
        async with anyfork.Pool(None, func, max=1, timeout=20) as workers:
            return [await workers(4), [r async for r in workers.map(range(3))]]

    for face, call in (("rpc", rpc), ("pool", pool)):
        try:
            out[face + tag] = await asyncio.wait_for(call(), 30)
        except Exception as exc:
            out[face + tag] = {"error": str(exc), "types": [t.__name__ for t in type(exc).__mro__]}


def faces(func: Callable[..., Any], tag: str) -> dict[str, Any]:
    """Every face, with ``func``; ``tag`` marks the keys (``""`` or ``"_lambda"``)."""
    out: dict[str, Any] = {}
    asyncio.run(in_loop(func, out, tag))

    def rpc_blocking() -> object:
        with anyfork.rpc_blocking(anyfork.new(), func, timeout=20) as client:
            return client(5)

    def blocking_pool() -> object:
        with anyfork.BlockingPool(None, func, max=1, timeout=20) as pool:
            return [pool(6), list(pool.map(range(3)))]

    def submit() -> object:
        with anyfork.PoolExecutor(max_workers=1) as executor:
            return executor.submit(func, 7).result(timeout=30)

    def executor_map() -> object:
        with anyfork.PoolExecutor(max_workers=1) as executor:
            return list(executor.map(func, range(3), timeout=30))

    attempt(out, "rpc_blocking" + tag, rpc_blocking)
    attempt(out, "blocking_pool" + tag, blocking_pool)
    attempt(out, "submit" + tag, submit)
    attempt(out, "executor_map" + tag, executor_map)
    return out


def main() -> None:
    out = {"main_pid": os.getpid(), **faces(square, ""), **faces(lambda x: (x, 0), "_lambda")}
    tmpl_funcs.emit(out)


mode = os.environ.get("FACES_MODE") or sys.argv[1]
if mode == "unguarded":
    main()  # (a worker that imports this script stops here: square is defined above)
elif __name__ == "__main__":
    main()
