"""Functions the RPC tests serve in child processes.  Stdlib only, cheap to import."""

from __future__ import annotations

import os
import select
import sys
from typing import Any

import anyfork.worker


def add(a: Any, b: Any = 0) -> Any:
    return a + b


def echo(*args: Any, **kwargs: Any) -> Any:
    return list(args), kwargs


def ident(x: Any) -> Any:
    return x


def upper(x: Any) -> Any:
    return x.upper()


def progress(i: int, n: int) -> int:
    """Stream ``n`` progress events, then return ``i``."""
    for k in range(n):
        anyfork.worker.event("progress", i, k)
    return i


class CustomError(Exception):
    """Picklable: the parent rebuilds it as itself."""


class Unrebuildable(Exception):
    """Pickles, but cannot be unpickled (its __init__ needs two arguments)."""

    def __init__(self, a: Any, b: Any):
        super().__init__(f"{a}/{b}")


def boom(kind: str, msg: str) -> None:
    if kind == "value":
        raise ValueError(msg)
    if kind == "custom":
        raise CustomError(msg)
    raise Unrebuildable(msg, "x")


def unpicklable_result() -> Any:
    return lambda: None


def block(tag: str) -> None:
    """Tell the parent we are running (an event), then block for good."""
    anyfork.worker.event("blocked", tag, os.getpid())
    select.select([], [], [])


def exit_now(how: str, code: int = 0) -> None:
    anyfork.worker.event("exiting", how)
    if how == "os._exit":
        os._exit(code)
    if how == "sys.exit":
        sys.exit(code)
    if how == "segfault":
        import faulthandler

        faulthandler.disable()  # no crash report on the test's stderr
        faulthandler._sigsegv()  # type: ignore[attr-defined]


def init_fail(*args: Any) -> None:
    raise CustomError(f"init failed with {len(args)} args")


_init_args: list[Any] = []


def init_store(*args: Any) -> None:
    _init_args[:] = args


def init_types() -> list[str]:
    return [repr(a) if isinstance(a, (str, bytes)) else type(a).__name__ for a in _init_args]


def event_in_init(*args: Any) -> None:
    anyfork.worker.event("too early")


def worker_facts() -> dict[str, Any]:
    return {"pid": os.getpid(), "asyncio": "asyncio" in sys.modules}


# -- async backend ------------------------------------------------------------------------------

_seq = [0]


def _next() -> int:
    _seq[0] += 1
    return _seq[0]


class _Yield:
    """Await it to let the other tasks run once (what ``asyncio.sleep(0)`` does)."""

    def __await__(self) -> Any:
        yield


async def aprogress(i: int, n: int) -> tuple[int, int]:
    """Events and a result stamped with a child-side sequence number; yields to the loop between
    them so that concurrent calls interleave."""
    for _ in range(n):
        anyfork.worker.event("seq", _next())
        await _Yield()
    return i, _next()


_gate: dict[str, Any] = {"fd": -1, "credits": 0, "waiters": [], "active": 0, "peak": 0}


def init_gate(pipe: Any) -> None:
    """Keep the read end of a pipe: each byte the parent writes releases one ``hold``."""
    _gate["file"] = pipe
    _gate["fd"] = pipe.fileno()
    os.set_blocking(_gate["fd"], False)


def _on_gate() -> None:
    try:
        data = os.read(_gate["fd"], 64)
    except BlockingIOError:
        return
    for _ in data:
        if _gate["waiters"]:
            fut = _gate["waiters"].pop(0)
            fut.set_result(None)
        else:
            _gate["credits"] += 1


async def hold(i: int) -> int:
    """Hold until the parent releases one byte; ``hold(-1)`` returns the peak concurrency."""
    import asyncio

    if i < 0:
        return int(_gate["peak"])
    _gate["active"] += 1
    _gate["peak"] = max(_gate["peak"], _gate["active"])
    anyfork.worker.event("started", i)
    if _gate["credits"]:
        _gate["credits"] -= 1
    else:
        loop = asyncio.get_running_loop()
        if not _gate.get("reader"):
            loop.add_reader(_gate["fd"], _on_gate)
            _gate["reader"] = True
        fut = loop.create_future()
        _gate["waiters"].append(fut)
        await fut
    _gate["active"] -= 1
    return i


_cancelled = [0]


async def wait_forever(tag: str) -> None:
    import asyncio

    anyfork.worker.event("waiting", tag)
    try:
        await asyncio.get_running_loop().create_future()
    except asyncio.CancelledError:
        _cancelled[0] += 1
        raise


async def cancelled_count() -> int:
    return _cancelled[0]


async def event_flush_exit(code: int) -> None:
    anyfork.worker.event("bye")
    assert anyfork.worker.flush() is True
    os._exit(code)


def sync_flush() -> bool:
    return anyfork.worker.flush()


def apply(func: Any, *args: Any) -> Any:
    """Call what the parent sent (a lambda or closure, with the cloudpickle serialiser)."""
    return func(*args)


def make_adder(n: int) -> Any:
    """Return a closure: only cloudpickle can send it back."""
    return lambda x: x + n


# -- fault tests: handshakes over pipes, and a fake server --------------------------------------

_pipes: list[Any] = []


def init_pipes(*files: Any) -> None:
    """Keep the pipe ends the parent sent (``send_fh``) for ``inflight``."""
    _pipes[:] = files


def inflight(mode: str) -> str:
    """``"answer"``: say so (an event), wait for the parent's byte on the first pipe, then
    return.  ``"block"``: write a byte to the second pipe (the calls before this one have been
    answered: the sync backend runs them in order), then block for good."""
    if mode == "answer":
        anyfork.worker.event("asked", mode)
        _pipes[0].read(1)
        return mode
    _pipes[1].write(b"x")
    _pipes[1].flush()
    select.select([], [], [])
    return mode


def fake_server(sock: Any, mode: str, *config: Any) -> None:
    """Stands in for the RPC server (the test points ``rpc()`` at it) and breaks the protocol
    the way ``mode`` says: before READY, or as the answer to the first call."""
    from anyfork._child import _rpc_wire as W
    from anyfork._child._serializers import get
    from helpers import recv_exactly

    def results(*values: Any) -> bytes:
        return b"".join(bytes(c) for c in get("pickle").dump_results(list(values)))

    ready = W.frame(W.READY, 0, W.ready_payload(os.getpid()))
    if mode == "garbage instead of READY":
        sock.sendall(b"\xff" * W.HEADER_SIZE)
    elif mode == "a bad READY":
        sock.sendall(W.frame(W.READY, 0, b"abc"))
    else:
        sock.sendall(ready)
        _, cid, size = W.HEADER.unpack(recv_exactly(sock, W.HEADER_SIZE))
        recv_exactly(sock, size)
        sock.sendall(
            {
                "an unknown kind": b"\xff" * W.HEADER_SIZE,
                "a second READY": ready,
                "an answer to no call": W.frame(W.OK, cid + 100, b""),
                "a broken error record": W.frame(W.ERROR, cid, b"\x00\x00\x00\x09abc"),
                "a header claiming 4 GiB": W.header(W.OK, cid, W.MAX_PAYLOAD) + b"abc",
                # Answers to a batch of two calls, or to a single call.
                "a batch answer to a single call": W.frame(W.BATCH_OK, cid, results()),
                "a single answer to a batch": W.frame(W.OK, cid, results()),
                "too few results": W.frame(W.BATCH_OK, cid, results(1)),
                "an item past the end failed": W.frame(
                    W.BATCH_ERROR, cid, W.batch_error_head(5, 0) + b"record"
                ),
                "a short BATCH_ERROR": W.frame(W.BATCH_ERROR, cid, b"abc"),
            }[mode]
        )
        if mode == "a header claiming 4 GiB":
            return  # exit with the frame cut short
    while sock.recv(65536):  # until the parent lets go
        pass


def dumps(obj: Any) -> bytes:
    """With ``loads``: this module is a user serialiser (``"rpc_funcs:..."`` style tests)."""
    import pickle

    return pickle.dumps(obj)


def loads(data: bytes) -> Any:
    import pickle

    return pickle.loads(data)


# -- batches, per-call events, done ---------------------------------------------------------------


def item(x: Any) -> Any:
    """An event per item (so a test sees which items ran), then ``2 * x``; negative items
    raise ``ValueError``, ``"lambda"`` returns what cannot be pickled."""
    anyfork.worker.event("ran", x)
    if x == "lambda":
        return lambda: None
    if x == "stop":
        raise StopIteration
    if x < 0:
        raise ValueError(f"negative item {x}")
    return 2 * x


async def aitem(x: Any) -> Any:
    """``item``, as a coroutine function that yields to the loop between its event and its
    result."""
    anyfork.worker.event("ran", x)
    await _Yield()
    if x < 0:
        raise ValueError(f"negative item {x}")
    return 2 * x


def pair(a: Any, b: Any) -> Any:
    return (a, b)


def _refuse() -> None:
    raise RuntimeError("this argument cannot be loaded in the worker")


class LoadsNowhere:
    """Pickles in the parent; loading it in the worker raises."""

    def __reduce__(self) -> Any:
        return _refuse, ()


async def in_subtask(tag: str) -> str:
    """An event from a task the call starts: it belongs to the call."""
    import asyncio

    async def sub() -> None:
        anyfork.worker.event("sub", tag)

    await asyncio.get_running_loop().create_task(sub())
    return tag


async def outside_any_call(tag: str) -> str:
    """An event from a callback in a context of its own: it belongs to no call."""
    import asyncio
    import contextvars

    loop = asyncio.get_running_loop()
    loop.call_soon(anyfork.worker.event, "outside", tag, context=contextvars.Context())
    await _Yield()  # the callback runs (and writes its event) before this call answers
    return tag


async def report_cancel(tag: str) -> None:
    """Wait for good (but for ``"return"``); when cancelled, say so (an event of this call)
    before the cancellation."""
    import asyncio

    anyfork.worker.event("waiting", tag)
    if tag == "return":
        return
    try:
        await asyncio.get_running_loop().create_future()
    except asyncio.CancelledError:
        anyfork.worker.event("cancelled", tag)
        raise


def retire_then(x: Any) -> Any:
    anyfork.worker.event(x)  # one value: every serialiser carries it
    anyfork.worker.retire()
    return x


_count = [0]


def counted(x: Any) -> Any:
    """Count the calls this worker has answered (``done_write`` reports the count)."""
    _count[0] += 1
    return x


def done_write() -> None:
    """``done``: write how many calls were answered to the pipe ``init_pipes`` kept."""
    _pipes[0].write(f"done after {_count[0]}".encode())
    _pipes[0].flush()


async def adone_write() -> None:
    await _Yield()
    done_write()


def done_fail() -> None:
    raise CustomError("done failed")


def done_event() -> None:
    anyfork.worker.event("too late")


def init_stderr(pipe: Any) -> None:
    """Send this worker's stderr to the pipe the parent passed."""
    os.dup2(pipe.fileno(), 2)
    pipe.close()


def stream_forever(x: Any) -> None:
    """Events until writing one fails (the parent has gone)."""
    while True:
        anyfork.worker.event("tick", x)


async def astream_forever(x: Any) -> None:
    while True:
        anyfork.worker.event("tick", x)
        await _Yield()


class Tagged:
    """A user serialiser as an instance: the worker finds it as this module's ``TAGGED``."""

    def dumps(self, obj: Any) -> bytes:
        import pickle

        return b"T" + pickle.dumps(obj)

    def loads(self, data: bytes) -> Any:
        import pickle

        if data[:1] != b"T":
            raise ValueError("not made by Tagged.dumps")
        return pickle.loads(data[1:])


TAGGED = Tagged()
