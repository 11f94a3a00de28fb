"""RPC failure paths over real processes, each on both client faces (asyncio and blocking):

* a worker condemned by a timeout or a cancellation takes no new call (issue 8, point 4);
* a cancelled sync call whose answer is already on its way (point 5);
* garbage received by a real worker (both backends) and by the parent (a fake server): one clear
  ``ProtocolError`` naming the worker, at once; nothing wedges (point 6);
* one outcome for a protocol-version mismatch, whichever side finds it (point 6);
* start-up failures are their own type and an ``AnyforkError``; a call's exception only its own
  (point 11).

Every wait has a deadline; synchronisation with the worker uses events and pipes, never sleeps.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import os
import select
import socket
import struct
import sys
import termios
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import anyfork
import rpc_faces
import rpc_funcs
from anyfork._child import _rpc_wire as W
from anyfork._rpc import _start
from helpers import eventually
from rpc_faces import AsyncFace, BlockingFace, Face

face = rpc_faces.face  # the fixture: each test runs with each face

DEADLINE = 30.0


def _wait_readable(fd: int) -> None:
    """Wait (bounded) for a byte on a pipe: the worker's side of a handshake."""
    assert select.select([fd], [], [], 10)[0], "the worker did not write to the pipe"


@pytest.fixture
def pipes() -> Iterator[tuple[int, int, int, int]]:
    """Two pipes, ``(to_worker_r, to_worker_w, from_worker_r, from_worker_w)``."""
    fds = (*os.pipe(), *os.pipe())
    try:
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


# -- point 4: a condemned worker takes no new call ---------------------------------------------


def test_condemned_worker_refuses_new_calls_at_once(face: Face) -> None:
    events: list[Any] = []
    client = face.rpc(anyfork.new(), "rpc_funcs:block", on_event=lambda *a: events.append(a))
    assert client.usable
    with pytest.raises(TimeoutError):
        face.call(client, "first", timeout=0.2)  # block() never returns: the worker is killed
    assert not client.usable  # at once: a pool takes it out of rotation now
    for _ in range(2):
        with pytest.raises(
            anyfork.WorkerDiedError,
            match=r"^the RPC worker \(pid \d+\) has been killed because call 1 timed out after "
            r"0\.2 s; the call was not sent$",
        ) as info:
            face.call(client, "second")
        assert info.value.pid == client.pid
    face.close(client)
    assert events == [("blocked", "first", client.pid)]  # "second" never reached the worker


def test_condemned_worker_fails_what_it_owed_and_nothing_more() -> None:
    """asyncio: the calls outstanding at the kill fail naming the call that caused it; a call
    made after it fails before it is sent (its future is done at once)."""

    async def main() -> None:
        seen = asyncio.Event()
        client = await anyfork.rpc(
            anyfork.new(), "rpc_funcs:block", on_event=lambda *a: seen.set(), timeout=10
        )
        owed = [client("a"), client("b")]
        await asyncio.wait_for(seen.wait(), 10)  # "a" is running
        with pytest.raises(TimeoutError):
            await client.call("c", timeout=0.2)
        late = client("d")
        assert late.done()
        with pytest.raises(anyfork.WorkerDiedError, match="has been killed because call 3 timed"):
            await late
        for exc in await asyncio.gather(*owed, return_exceptions=True):
            assert isinstance(exc, anyfork.WorkerDiedError)
            assert "killed by SIGKILL): it was killed because call 3 timed out" in str(exc)
        await client.aclose(timeout=10)

    asyncio.run(asyncio.wait_for(main(), DEADLINE))


def test_condemned_by_a_cancelled_map_names_it(face: Face) -> None:
    client = face.rpc(anyfork.new(), "rpc_funcs:block", on_event=lambda *a: None)
    with pytest.raises(TimeoutError):
        face.map(client, ["x", "y"], timeout=0.2)
    with pytest.raises(
        anyfork.WorkerDiedError,
        match=r"has been killed because call 1 timed out after 0\.2 s; the call was not sent$",
    ):
        face.call(client, "z")
    face.close(client)


# -- point 5: the answer of an abandoned sync call is already on its way ------------------------


class _Interrupted(Exception):
    """Raised from a blocking client's ``on_event``: the call in progress is abandoned."""


def _start_inflight(
    face: Face, pipes: tuple[int, int, int, int], on_event: Callable[..., object]
) -> tuple[Any, list[BaseException]]:
    errors: list[BaseException] = []
    proc = anyfork.new().send_fh(pipes[0], pipes[3])
    client = face.rpc(
        proc,
        "rpc_funcs:inflight",
        init="rpc_funcs:init_pipes",
        on_event=on_event,
        on_error=errors.append,
    )
    return client, errors


def test_cancelled_sync_call_with_its_answer_in_flight_asyncio(
    pipes: tuple[int, int, int, int],
) -> None:
    face = AsyncFace()
    asked = asyncio.Event()
    try:
        client, errors = _start_inflight(face, pipes, lambda *a: asked.set())

        async def main() -> BaseException:
            answer, blocker = client("answer"), client("block")
            await asyncio.wait_for(asked.wait(), 10)  # call 1 waits for our byte
            # Within this step of the loop (nothing is read meanwhile): let call 1 answer, wait
            # until its answer has been sent (call 2 has started), then give up on call 1.
            os.write(pipes[1], b"x")
            _wait_readable(pipes[2])
            answer.cancel()
            outcome = (await asyncio.gather(blocker, return_exceptions=True))[0]
            await client.aclose(timeout=10)
            assert isinstance(outcome, BaseException)
            return outcome

        died = face.run(main())
    finally:
        face.end()
    assert isinstance(died, anyfork.WorkerDiedError), died
    assert "it was killed because call 1 was cancelled" in str(died)
    assert [type(e) for e in errors] == [anyfork.WorkerDiedError]


def test_interrupted_sync_call_with_its_answer_in_flight_blocking(
    pipes: tuple[int, int, int, int],
) -> None:
    def on_event(*args: Any) -> None:
        os.write(pipes[1], b"x")  # call 1 answers ...
        _wait_readable(pipes[2])  # ... its answer is sent: call 2 has started
        raise _Interrupted  # and the caller gives up on both

    client, errors = _start_inflight(BlockingFace(), pipes, on_event)
    with pytest.raises(_Interrupted):
        client.map(["answer", "block"])
    with pytest.raises(anyfork.WorkerDiedError, match="because call 1 was interrupted"):
        client("again")
    client.close(timeout=10)  # reads the answer to call 1, then the EOF
    assert errors == []  # the answer was expected, not a broken stream


# -- point 6: a real worker receives garbage ---------------------------------------------------


def _unread(sock: socket.socket) -> int:
    """Bytes we sent that the peer has not read yet."""
    out = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")  # SIOCOUTQ on Linux
    return int(struct.unpack("i", out)[0])


def _peak_rss(pid: int) -> int:
    """The process's peak resident size, in bytes (VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


@pytest.mark.parametrize(
    ("garbage", "why"),
    [
        (W.frame(W.OK, 1, b"zz"), "unexpected frame kind 0x4f"),  # a kind for the parent
        (b"\xff" * W.HEADER_SIZE, "unexpected frame kind 0xff"),
        (W.header(W.CALL, 9, W.MAX_PAYLOAD) + b"abc", "EOF in the middle of a frame"),
    ],
    ids=["parent-bound kind", "unknown kind", "header claiming 4 GiB, then EOF"],
)
@pytest.mark.parametrize("backend", ["sync", "async"])
def test_worker_receiving_garbage_says_so_and_exits(
    face: Face, backend: str, garbage: bytes, why: str
) -> None:
    errors: list[BaseException] = []
    client = face.rpc(anyfork.new(), "rpc_funcs:add", backend=backend, on_error=errors.append)
    assert face.call(client, 1, 2) == 3
    sock = client._sock
    peak_before = _peak_rss(client.pid)

    def write_garbage() -> None:
        sock.sendall(garbage)
        if why.startswith("EOF"):
            # Once the worker has read a byte sent after the header, it has handled the header
            # (one thread: it reads again only then), and allocated what it is going to for it:
            # little (it used to zero-fill 4 GiB).  Then the frame ends early.
            for _ in range(2):
                eventually(lambda: _unread(sock) == 0, what="the worker to read the garbage")
                sock.sendall(b"d")
            assert _peak_rss(client.pid) < peak_before + (32 << 20)
            sock.shutdown(socket.SHUT_WR)

    with pytest.raises(anyfork.ProtocolError) as info:
        face.call(client, 3, 4, first=write_garbage)
    expected = f"the RPC worker (pid {client.pid}) stopped: it received a broken stream ({why})"
    assert str(info.value) == expected
    assert errors == [info.value]
    assert not client.usable
    with pytest.raises(anyfork.ClosedError, match="the RPC connection failed"):
        face.call(client, 5, 6)
    face.close(client)
    assert client.returncode == 1


# -- point 6: the parent receives garbage (a fake server) ----------------------------------------


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """``rpc()`` starts ``rpc_funcs.fake_server`` instead of the RPC server."""
    monkeypatch.setattr(_start, "_SERVE", "rpc_funcs:fake_server")


@pytest.mark.usefixtures("fake_server")
@pytest.mark.parametrize(
    ("mode", "why"),
    [
        ("garbage instead of READY", "unexpected frame kind 0xff"),
        ("a bad READY", "READY payload of 3 bytes"),
    ],
)
def test_garbage_before_ready_fails_the_start(face: Face, mode: str, why: str) -> None:
    proc = anyfork.new().send_arg(mode)
    with pytest.raises(anyfork.ProtocolError) as info:
        face.rpc(proc, "rpc_funcs:add")
    assert str(info.value) == f"the RPC worker (pid {proc.pid}) sent a broken stream: {why}"


@pytest.mark.usefixtures("fake_server")
@pytest.mark.parametrize(
    ("mode", "why"),
    [
        ("an unknown kind", "unexpected frame kind 0xff"),
        ("a second READY", "a second READY"),
        ("an answer to no call", "an answer to call 101, which is not outstanding"),
        ("a broken error record", "a broken error record"),
    ],
)
def test_garbage_after_ready_fails_the_connection(face: Face, mode: str, why: str) -> None:
    errors: list[BaseException] = []
    client = face.rpc(anyfork.new().send_arg(mode), "rpc_funcs:add", on_error=errors.append)
    with pytest.raises(anyfork.ProtocolError) as info:
        face.call(client, 1, 2)
    assert str(info.value) == f"the RPC worker (pid {client.pid}) sent a broken stream: {why}"
    assert errors == [info.value]
    assert not client.usable
    face.close(client)


@pytest.mark.usefixtures("fake_server")
@pytest.mark.parametrize(
    ("mode", "batch", "why"),
    [
        ("a batch answer to a single call", False, "an answer as a batch to call 1, which is not"),
        ("a single answer to a batch", True, "an answer as a single call to call 1, which is not"),
        ("too few results", True, "a batch answer with 1 results for 2"),
        ("an item past the end failed", True, "item 5 of a batch of 2 failed"),
        ("a short BATCH_ERROR", True, "BATCH_ERROR payload of 3 bytes"),
    ],
)
def test_broken_batch_answers_fail_the_connection(
    face: Face, mode: str, batch: bool, why: str
) -> None:
    errors: list[BaseException] = []
    client = face.rpc(anyfork.new().send_arg(mode), "rpc_funcs:add", on_error=errors.append)

    def send() -> object:
        return face.batch(client, [[1, 2]]) if batch else face.call(client, 1)

    with pytest.raises(anyfork.ProtocolError) as info:
        send()
    assert str(info.value).startswith(f"the RPC worker (pid {client.pid}) sent a broken stream: ")
    assert why in str(info.value)
    assert errors == [info.value]
    assert not client.usable
    face.close(client)


@pytest.mark.usefixtures("fake_server")
def test_a_header_claiming_4_gib_costs_nothing_in_the_parent(face: Face) -> None:
    """The fake answers with a header that claims 4 GiB, three bytes, and exits: the parent
    allocates for what arrived, and the call fails as soon as the worker is gone."""
    import tracemalloc

    client = face.rpc(anyfork.new().send_arg("a header claiming 4 GiB"), "rpc_funcs:add")
    tracemalloc.start()
    try:
        with pytest.raises(anyfork.WorkerDiedError, match=r"in the middle of a frame\)$"):
            face.call(client, 1, 2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    face.close(client)


# -- one outcome for a protocol-version mismatch -------------------------------------------------


def test_version_mismatch_found_by_the_worker(face: Face, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(W, "pack_config", functools.partial(W.pack_config, version=99))
    proc = anyfork.new()
    with pytest.raises(anyfork.ProtocolError) as info:
        face.rpc(proc, "rpc_funcs:add")
    assert str(info.value) == W.version_mismatch(99, W.VERSION)
    assert info.value.__notes__ == [f"(anyfork RPC worker pid {proc.pid} failed to start)"]


def test_version_mismatch_found_by_the_parent(face: Face, monkeypatch: pytest.MonkeyPatch) -> None:
    speaks = W.VERSION
    monkeypatch.setattr(W, "VERSION", 99)  # here only: the worker still speaks its own
    proc = anyfork.new()
    with pytest.raises(anyfork.ProtocolError) as info:
        face.rpc(proc, "rpc_funcs:add")
    assert str(info.value) == f"{W.version_mismatch(99, speaks)} (pid {proc.pid})"


# -- point 11: start-up failures are both their own type and an AnyforkError --------------------


def _parent_only_codec(monkeypatch: pytest.MonkeyPatch) -> str:
    """A user serialiser importable here but not in the worker."""
    module = types.ModuleType("parent_only_codec")
    module.codec = rpc_funcs  # type: ignore[attr-defined]  # anything with dumps and loads
    monkeypatch.setitem(sys.modules, "parent_only_codec", module)
    return "parent_only_codec:codec"


def _no_msgpack(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(sys.modules, "msgpack", None)  # ``import msgpack`` raises ImportError
    return "msgpack"


_STARTUP_FAILURES: dict[str, tuple[dict[str, Any], type[BaseException], str]] = {
    "wrong function name": ({"func": "rpc_funcs:no_such_function"}, AttributeError, "no_such"),
    "unimportable module": ({"func": "no_such_module_xyz:f"}, ModuleNotFoundError, "no_such_mod"),
    "exception in init": ({"init": "rpc_funcs:init_fail"}, rpc_funcs.CustomError, "init failed"),
    "event in init": ({"init": "rpc_funcs:event_in_init"}, RuntimeError, "only in an RPC worker"),
    "serialiser the worker cannot build": ({}, ModuleNotFoundError, "parent_only_codec"),
    "serialiser this side cannot build": ({}, ImportError, "pip install msgpack"),
    "unknown serialiser": ({"serializer": "yaml"}, ValueError, "unknown serialiser 'yaml'"),
    "bad backend": ({"backend": "threads"}, ValueError, "'sync' or 'async'"),
}


@pytest.mark.parametrize("case", list(_STARTUP_FAILURES))
def test_startup_failures_are_their_own_type_and_anyfork_errors(
    face: Face, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    options, kind, text = _STARTUP_FAILURES[case]
    options = {"func": "rpc_funcs:add", **options}
    if case == "serialiser the worker cannot build":
        options["serializer"] = _parent_only_codec(monkeypatch)
    elif case == "serialiser this side cannot build":
        options["serializer"] = _no_msgpack(monkeypatch)
    proc = anyfork.new()
    try:
        with pytest.raises(kind, match=text) as info:
            face.rpc(proc, options.pop("func"), **options)
    finally:
        proc.close()
    assert isinstance(info.value, anyfork.AnyforkError)


def test_a_calls_own_exception_is_only_its_own_type(face: Face) -> None:
    client = face.rpc(anyfork.new(), "rpc_funcs:boom")
    try:
        with pytest.raises(ValueError, match="bad value") as info:
            face.call(client, "value", "bad value")
        assert not isinstance(info.value, anyfork.AnyforkError)
        with pytest.raises(rpc_funcs.CustomError) as custom:
            face.call(client, "custom", "mine")
        assert not isinstance(custom.value, anyfork.AnyforkError)
    finally:
        face.close(client)


# -- one behaviour for a worker that died idle -----------------------------------------------------


def test_a_call_after_an_idle_worker_died_is_worker_died(face: Face) -> None:
    """Whether the client saw the EOF while idle (asyncio) or finds it with the call (blocking),
    a call to a worker that has died is a ``WorkerDiedError``."""
    ended = asyncio.Event()
    proc = anyfork.new()
    client = face.rpc(proc, "rpc_funcs:ident", on_close=ended.set)
    try:
        assert face.call(client, 1) == 1
        proc.kill()
        assert proc.wait_blocking(timeout=DEADLINE) == -9
        if isinstance(face, AsyncFace):
            face.run(ended.wait())  # the client has read the EOF: it knows, idle
            assert not client.usable
        with pytest.raises(anyfork.WorkerDiedError):
            face.call(client, 2)
        assert not client.usable
    finally:
        client.abort()
