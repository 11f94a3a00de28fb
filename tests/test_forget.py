"""Configure and forget (issue 8, point 9) and hand-over (point 10).

The original's idiom ``new()->send_fh($fh)->eval(...)``, the object dropped at once, runs the
commands every time: a child carries out every command it has received and exits at EOF, and a
process dropped or closed before ``run`` still gets what was queued for it, also what was still
queued in the parent (an eval bigger than the socket buffer, a FORK frame behind a busy
template).  Each test drops its processes and then reads what their evals wrote into a pipe.

Faces: ``blocking`` drops them on a thread without an event loop; ``asyncio`` inside a running
loop, reading the pipe on the loop; ``asyncio-shutdown`` drops them as the loop ends.
"""

from __future__ import annotations

import asyncio
import os
import select
import time

import pytest

import anyfork
from helpers import FACES, wait_on

#: For reading what the children wrote; a lost command shows as missing bytes at this deadline.
DEADLINE = 20.0
LOOP_FACES = ("blocking", "asyncio", "asyncio-shutdown")

WRITE_MARK = (
    "import anyfork.worker\n"
    "out = anyfork.worker.take_args()[-1]\n"
    "out.write(args[0].encode() + b'.')\n"
)


def read_until_eof(r: int, deadline: float = DEADLINE) -> bytes:
    """What the pipe holds once every writer is gone; at the deadline, what came so far."""
    data = b""
    end = time.monotonic() + deadline
    while (left := end - time.monotonic()) > 0 and select.select([r], [], [], left)[0]:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    return data


async def read_until_eof_async(r: int) -> bytes:
    """``read_until_eof`` on the running loop (which meanwhile runs the release tasks)."""
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    done = loop.create_future()

    def readable() -> None:
        chunk = os.read(r, 65536)
        chunks.append(chunk)
        if not chunk and not done.done():
            done.set_result(None)

    loop.add_reader(r, readable)
    try:
        await asyncio.wait_for(asyncio.shield(done), DEADLINE)
    except TimeoutError:
        pass
    finally:
        loop.remove_reader(r)
    return b"".join(chunks)


def marks(data: bytes) -> list[str]:
    return sorted(data.decode().split(".")[:-1], key=int)


def forget_on(face: str, configure: object, r: int) -> bytes:
    """Call ``configure()`` (which makes processes and drops them) on ``face``, then read."""
    assert callable(configure)
    if face == "blocking":
        configure()
        return read_until_eof(r)

    async def main() -> bytes:
        configure()
        if face == "asyncio":
            return await read_until_eof_async(r)
        return b""  # the loop ends now: asyncio.run cancels the release tasks

    data = asyncio.run(main())
    return data if face == "asyncio" else read_until_eof(r)


@pytest.mark.parametrize("face", LOOP_FACES)
def test_configure_and_forget(face: str) -> None:
    r, w = os.pipe()

    def configure() -> None:
        for i in range(50):
            if i % 2:
                anyfork.new().send_fh(w).eval(WRITE_MARK, str(i))  # dropped at once
            else:
                with anyfork.new() as proc:  # closed
                    proc.send_fh(w).eval(WRITE_MARK, str(i))
        os.close(w)

    try:
        assert marks(forget_on(face, configure, r)) == [str(i) for i in range(50)]
    finally:
        os.close(r)


@pytest.mark.parametrize("face", LOOP_FACES)
def test_an_eval_bigger_than_the_socket_buffer_still_arrives(face: str) -> None:
    """Most of the eval is still queued in the parent when the process is dropped."""
    r, w = os.pipe()
    big = WRITE_MARK + "#" * (4 << 20) + "\n"

    def configure() -> None:
        for i in range(3):
            proc = anyfork.new().send_fh(w).eval(big, str(i))
            assert proc._chan._out  # still queued in the parent: the point of the test
            del proc
        os.close(w)

    try:
        assert marks(forget_on(face, configure, r)) == ["0", "1", "2"]
    finally:
        os.close(r)


@pytest.mark.parametrize("face", LOOP_FACES)
def test_fork_frames_still_queued_on_a_busy_template_still_arrive(face: str) -> None:
    """The template is busy (an eval waits on a gate) while hundreds of children are made: most
    FORK frames are still queued in the parent when the children are dropped."""
    count = 400
    r, w = os.pipe()
    gate_r, gate_w = os.pipe()
    tmpl = (
        anyfork.new()
        .send_fh(gate_r)
        .eval("import anyfork.worker\nanyfork.worker.take_args()[0].read(1)")
    )
    os.close(gate_r)
    children = [tmpl.fork().send_fh(w).eval(WRITE_MARK, str(i)) for i in range(count)]
    assert tmpl._chan._out  # FORK frames still queued in the parent: the point of the test

    def configure() -> None:
        os.write(gate_w, b"x")
        children.clear()
        os.close(w)

    try:
        assert marks(forget_on(face, configure, r)) == [str(i) for i in range(count)]
    finally:
        tmpl.close()
        for fd in (r, gate_w):
            os.close(fd)


# -- hand-over: AnyEvent::Fork's t/04_tofrom.t -------------------------------------------------

#: The third process adopts the two handed-over processes, prepares them further, runs them.
ADOPT_AND_RUN = """
import anyfork, anyfork.worker
handed_a, handed_b, out = anyfork.worker.take_args()
for handed in (handed_a, handed_b):
    proc = anyfork.new_from_fh(handed).send_arg("prepared by the third")
    proc.eval("def show(sock, *a):\\n    a[-1].write(repr(a[:-1]).encode())")
    proc.send_fh(out)
    proc.run_blocking("show", timeout=10).close()
"""

#: The same, configure and forget: the third process drops them and ends.
ADOPT_AND_FORGET = """
import anyfork, anyfork.worker
handed_a, handed_b, out = anyfork.worker.take_args()
for handed in (handed_a, handed_b):
    anyfork.new_from_fh(handed).send_arg("prepared by the third").send_fh(out).eval(
        "import anyfork.worker, os\\n*a, out = anyfork.worker.take_args()\\n"
        "os.write(out.fileno(), repr(tuple(a)).encode())"
    )
"""


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("adopter", ["runs", "forgets"])
def test_two_processes_handed_to_a_third_that_prepares_and_runs_them(
    face: str, adopter: str
) -> None:
    """The first owner hands both over (``to_fh``) to a third process, then lets go of
    everything at once (the third process too: configure and forget).  Repeated, to catch the
    race that lost the third process's commands every time."""
    code = ADOPT_AND_RUN if adopter == "runs" else ADOPT_AND_FORGET
    for _ in range(8):
        r, w = os.pipe()
        try:
            a = wait_on(face, anyfork.new().send_arg("a from the first owner"), "to_fh")
            b = wait_on(face, anyfork.new().send_arg("b from the first owner"), "to_fh")
            anyfork.new().send_fh(a, b, w).eval(code)
            for handle in (a, b):
                handle.close()
            os.close(w)
            assert sorted(read_until_eof(r).replace(b")(", b")\n(").split(b"\n")) == [
                b"('a from the first owner', 'prepared by the third')",
                b"('b from the first owner', 'prepared by the third')",
            ]
        finally:
            os.close(r)


def test_a_forgotten_process_whose_command_fails_says_so_on_stderr(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Nobody reads the error report of a process its creator has dropped: like the original
    (``[pid] ERROR: ...``), the child writes the failure to its stderr instead of failing in
    silence.  The pipe it holds closes when it exits: the handshake that it is done.  (Exec'd
    here, so that its stderr is this test's: the default template may predate the capture.)"""
    r, w = os.pipe()
    try:
        anyfork.new_exec().send_fh(w).eval("raise LookupError('forgotten and failed')")
        os.close(w)
        w = -1
        assert read_until_eof(r) == b""
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    err = capfd.readouterr().err
    assert "eval failed" in err
    assert "LookupError: forgotten and failed" in err
