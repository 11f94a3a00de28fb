"""``rpc(..., done=func)``: the worker calls ``done()`` once its creator has closed the
connection and every call has been answered, then exits; on both client faces and both
backends.  An exception in it is printed to the worker's stderr and it exits with status 1,
while ``aclose()``/``close()`` still return.

The worker reports through pipes it was sent (``init``); every read has a deadline.
"""

from __future__ import annotations

import asyncio
import os
import select
from collections.abc import Iterator
from typing import Any

import pytest

import anyfork
import rpc_faces
from rpc_faces import AsyncFace, Face

face = rpc_faces.face  # the fixture: each test runs with each face


class Pipe:
    """A pipe whose write end goes to the worker: ``read_all()`` reads until the worker (its
    only writer) has exited, with a deadline."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()

    def give_away(self) -> int:
        w, self.w = self.w, -1
        return w

    def read_all(self) -> bytes:
        data = b""
        while True:
            assert select.select([self.r], [], [], 10)[0], "the worker did not finish writing"
            chunk = os.read(self.r, 65536)
            if not chunk:
                return data
            data += chunk

    def close(self) -> None:
        os.close(self.r)
        if self.w >= 0:
            os.close(self.w)


@pytest.fixture
def pipe() -> Iterator[Pipe]:
    made = Pipe()
    try:
        yield made
    finally:
        made.close()


def _start(face: Face, pipe: Pipe, init: str, func: str = "rpc_funcs:counted", **kw: Any) -> Any:
    """A worker that keeps the write end of ``pipe`` (ours is closed once it has it)."""
    w = pipe.w
    client = face.rpc(anyfork.new().send_fh(w), func, init=init, **kw)
    os.close(pipe.give_away())
    return client


@pytest.mark.parametrize(
    ("backend", "done"),
    [
        ("sync", "rpc_funcs:done_write"),
        ("async", "rpc_funcs:done_write"),
        ("async", "rpc_funcs:adone_write"),
    ],
)
def test_done_runs_after_every_call_is_answered(
    face: Face, pipe: Pipe, backend: str, done: str
) -> None:
    client = _start(face, pipe, "rpc_funcs:init_pipes", backend=backend, done=done)
    if isinstance(face, AsyncFace):
        # The calls are still outstanding when the close begins: done waits for them.
        async def calls_then_close() -> list[Any]:
            calls = [client(i) for i in range(5)]
            closing = asyncio.ensure_future(client.aclose(timeout=10))
            results = list(await asyncio.gather(*calls))
            await closing
            return results

        assert face.run(calls_then_close()) == list(range(5))
    else:
        assert face.map(client, range(5), chunksize=1) == list(range(5))
        face.close(client)
    assert pipe.read_all() == b"done after 5"
    assert client.returncode == 0


@pytest.mark.parametrize("backend", ["sync", "async"])
def test_an_exception_in_done_is_printed_and_the_worker_exits_1(
    face: Face, pipe: Pipe, backend: str
) -> None:
    closes: list[int] = []
    client = _start(
        face,
        pipe,
        "rpc_funcs:init_stderr",
        backend=backend,
        done="rpc_funcs:done_fail",
        on_close=lambda: closes.append(1),
    )
    assert face.call(client, 1) == 1
    face.close(client)  # returns all the same
    assert client.returncode == 1
    assert closes == [1]
    stderr = pipe.read_all().decode()
    assert "in done_fail" in stderr
    assert stderr.rstrip().endswith("rpc_funcs.CustomError: done failed")


def test_a_coroutine_done_needs_the_async_backend(face: Face, pipe: Pipe) -> None:
    client = _start(face, pipe, "rpc_funcs:init_stderr", done="rpc_funcs:adone_write")
    face.close(client)
    assert client.returncode == 1
    stderr = pipe.read_all().decode()
    assert "TypeError: done() returned an awaitable: awaiting it needs backend='async'" in stderr
    assert "never awaited" not in stderr


@pytest.mark.parametrize("backend", ["sync", "async"])
def test_no_event_in_done(face: Face, pipe: Pipe, backend: str) -> None:
    client = _start(
        face, pipe, "rpc_funcs:init_stderr", backend=backend, done="rpc_funcs:done_event"
    )
    face.close(client)
    assert client.returncode == 1
    assert "works only in an RPC worker, while it serves" in pipe.read_all().decode()


@pytest.mark.parametrize("backend", ["sync", "async"])
def test_done_does_not_run_after_a_broken_stream(face: Face, pipe: Pipe, backend: str) -> None:
    client = _start(
        face, pipe, "rpc_funcs:init_pipes", backend=backend, done="rpc_funcs:done_write"
    )
    with pytest.raises(anyfork.ProtocolError, match="it received a broken stream"):
        face.call(client, 1, first=lambda: client._sock.sendall(b"\xff" * 9))
    face.close(client)
    assert client.returncode == 1
    assert pipe.read_all() == b""


@pytest.mark.parametrize(
    ("backend", "func"),
    [("sync", "rpc_funcs:stream_forever"), ("async", "rpc_funcs:astream_forever")],
)
def test_done_does_not_run_when_the_parent_has_gone(
    face: Face, pipe: Pipe, backend: str, func: str
) -> None:
    """The parent lets go while the worker writes to it: the worker exits without ``done``."""
    client = _start(
        face, pipe, "rpc_funcs:init_pipes", func, backend=backend, done="rpc_funcs:done_write"
    )
    with pytest.raises(anyfork.ClosedError, match="aborted"):
        face.call(client, 1, on_event=lambda *args: client.abort())
    assert pipe.read_all() == b""  # until the worker has exited


@pytest.mark.parametrize(
    ("done", "kind"),
    [("rpc_funcs:no_such_done", AttributeError), ("no_such_module_xyz:done", ModuleNotFoundError)],
)
def test_a_wrong_done_name_fails_the_start(face: Face, done: str, kind: type) -> None:
    proc = anyfork.new()
    try:
        with pytest.raises(kind) as info:
            face.rpc(proc, "rpc_funcs:add", done=done)
    finally:
        proc.close()
    assert isinstance(info.value, anyfork.AnyforkError)
