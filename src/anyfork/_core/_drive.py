"""The two drivers of the protocol generators (``_channel.Op``), and ``release`` (lets go of a
channel once what is queued is written, without starting a thread)."""

from __future__ import annotations

import contextlib
import select
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from ._channel import WRITE, Channel, Drain, Op, Wait

if TYPE_CHECKING:
    # Only drive_async needs asyncio at run time, and imports it there: an early or main
    # template forked from a program that has not imported asyncio must not carry it.
    import asyncio

T = TypeVar("T")

_POLL_EVENTS = (select.POLLIN, select.POLLOUT)


def drive_blocking(op: Op[T], timeout: float | None) -> T:
    """Run a protocol generator to completion, blocking in ``poll``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        wait = next(op)
        while True:
            until = _earliest(deadline, wait.until)
            chan = wait.chan
            ready = True
            if wait.fd is not None:
                ready = _poll(wait.fd, select.POLLIN, None, until)
            elif chan is None:
                time.sleep(max(0.0, (until or 0.0) - time.monotonic()))
                ready = False
            elif chan.sock is not None:
                ready = _poll(chan.fd, _POLL_EVENTS[wait.kind], wait.drain, until)
            wait = _resume(op, ready, deadline, timeout)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]  # the generator's declared return type


def _poll(fd: int, events: int, drain: Drain | None, until: float | None) -> bool:
    """Wait for ``events`` on ``fd`` (``False``: ``until`` passed); meanwhile call ``drain[1]``
    whenever ``drain[0]`` is readable."""
    poller = select.poll()
    mask, other = events, -1  # other: the drain's fd, when it is not ``fd``
    if drain is not None:
        if not drain[0].readable():
            drain = None
        elif drain[0].fd == fd:
            mask |= select.POLLIN
        else:
            other = drain[0].fd
            poller.register(other, select.POLLIN)
    poller.register(fd, mask)
    while True:
        remaining = None if until is None else max(0.0, until - time.monotonic())
        ready = poller.poll(None if remaining is None else remaining * 1000)
        if not ready:
            return False
        mine = False
        for got, what in ready:
            if got == other:
                drain[1]()  # type: ignore[index]  # other >= 0 only with a drain
            elif got == fd:
                if mask != events and what & select.POLLIN:  # readable: the drain's business
                    drain[1]()  # type: ignore[index]  # mask != events only with a drain
                    what &= ~select.POLLIN
                if what:
                    mine = True
        if mine:
            return True
        if drain is not None and not drain[0].readable():  # at EOF, or past RUNNING
            if other >= 0:
                poller.unregister(other)
            else:
                poller.modify(fd, events)
            drain, mask, other = None, events, -1


async def drive_async(op: Op[T], timeout: float | None) -> T:
    """Run a protocol generator to completion on the running event loop."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        wait = next(op)
        while True:
            until = _earliest(deadline, wait.until)
            chan, kind, drain = wait.chan, wait.kind, wait.drain
            fut: asyncio.Future[bool] = loop.create_future()
            if wait.fd is not None:
                loop.add_reader(wait.fd, _settle, fut, True)
            elif chan is not None:
                chan.add_waiter(loop, kind, fut, wait.upto)
            if drain is not None:
                drain[0].keep_drained(loop, drain[1])
            timer = None
            if until is not None:
                timer = loop.call_later(max(0.0, until - time.monotonic()), _settle, fut, False)
            try:
                ready = await fut
            except BaseException:
                op.close()
                raise
            finally:
                if timer is not None:
                    timer.cancel()
                if wait.fd is not None:
                    loop.remove_reader(wait.fd)
                elif chan is not None:
                    chan.discard_waiter(loop, kind, fut)
            wait = _resume(op, ready, deadline, timeout)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]  # the generator's declared return type


def _resume(op: Op[T], ready: bool, deadline: float | None, timeout: float | None) -> Wait:
    """Resume ``op`` after a wait (``ready``: it ended before its own deadline), unless the whole
    operation's deadline has passed.  Raises ``StopIteration`` when ``op`` is done."""
    if not ready and deadline is not None and time.monotonic() >= deadline:
        op.close()
        raise TimeoutError(f"no answer within {timeout} s")
    return op.send(ready)


def _settle(fut: asyncio.Future[bool], ready: bool) -> None:
    if not fut.done():
        fut.set_result(ready)


def _earliest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


# -- letting go ----------------------------------------------------------------------------------

#: The tasks finishing a ``release`` on an event loop (the loop keeps only weak references).
_releasing: set[asyncio.Task[None]] = set()


def release(chan: Channel, chain: Sequence[Channel] = (), keep_reading: bool = False) -> None:
    """Let go of ``chan``: close it once everything queued on it, and on ``chain`` (its
    templates' channels, oldest first: its FORK frame may be queued there), has been written.
    ``keep_reading``: only shut the writing side, so that reports can still be read.

    Returns at once when the kernel takes everything now (the usual case).  Otherwise a task
    on the thread's running event loop finishes the writes (in a blocking write if the loop
    shuts down first); without one the writes finish here, as long as the children read."""
    if chan.sock is None:
        return
    end = chan.shutdown_write if keep_reading else chan.close
    if _flush_nowait((*chain, chan)):
        end()
        return
    asyncio = sys.modules.get("asyncio")
    loop = asyncio._get_running_loop() if asyncio is not None else None
    if loop is None:
        try:
            drive_blocking(deliver(chan, chain), None)
        finally:
            end()
        return
    task = loop.create_task(_deliver_async(chan, chain, end))
    _releasing.add(task)
    task.add_done_callback(_releasing.discard)


async def _deliver_async(chan: Channel, chain: Sequence[Channel], end: Callable[[], None]) -> None:
    import asyncio

    try:
        await drive_async(deliver(chan, chain), None)
    except asyncio.CancelledError:
        # The loop is shutting down (asyncio.run cancels what is left): finish without it.
        drive_blocking(deliver(chan, chain), None)
    finally:
        end()


def deliver(chan: Channel, chain: Sequence[Channel] = ()) -> Op[None]:
    """Write everything queued on ``chain`` and ``chan`` (in that order), as far as each
    process takes it: one that is gone ends its part (what depends on it is gone too)."""
    for each in (*chain, chan):
        upto = each.queued
        while each.sock is not None:
            try:
                if each.flush_nowait(upto):
                    break
            except OSError:
                break
            yield Wait(WRITE, each, upto=upto)


def _flush_nowait(chans: Sequence[Channel]) -> bool:
    done = True
    for each in chans:
        with contextlib.suppress(OSError):
            done = each.flush_nowait() and done
    return done
