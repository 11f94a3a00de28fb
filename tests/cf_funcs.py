"""What the tests adapted from CPython's ``Lib/test/test_concurrent_futures/`` run in workers:
their functions and objects, in a module the workers import by name (stdlib only).

CPython's tests sleep in the workers so that a call is still running when the test looks; here
such a call waits on the gate instead (``pool_funcs.init_gate``: a pipe the test holds), and
tells the test it has started with an event, so the test decides when it ends.
"""

from __future__ import annotations

import os
import pickle
import sys
from typing import Any

import anyfork.worker
import pool_funcs


def mul(x: Any, y: Any) -> Any:
    return x * y


def capture(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


def blocked(value: Any = None) -> Any:
    """Runs until the test opens the gate (one byte): stands for CPython's ``time.sleep``."""
    anyfork.worker.event("started", value, os.getpid())
    if not pool_funcs._gate.read(1):
        raise EOFError("the gate was closed")
    return value


def sleep(t: float) -> None:
    """CPython's ``time.sleep(t)`` as its tests use it: ``0`` returns at once, anything else
    runs until the gate opens."""
    if t:
        blocked(t)


def say(msg: str) -> None:
    """CPython's ``sleep_and_print`` without the sleep: the worker prints to its stdout."""
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()


class MyObject:
    def my_method(self) -> None:
        pass


def make_dummy_object(_: Any) -> MyObject:
    return MyObject()


INITIALIZER_STATUS = "uninitialized"


def init(x: str) -> None:
    global INITIALIZER_STATUS
    INITIALIZER_STATUS = x


def get_init_status() -> str:
    return INITIALIZER_STATUS


def init_fail() -> None:
    raise ValueError("error in initializer")


class RemoteFailure(Exception):
    @classmethod
    def raise_it(cls) -> None:
        raise RuntimeError(123)  # some comment


def _crash(delay: Any = None) -> None:
    """Induces a segfault."""
    import faulthandler

    faulthandler.disable()
    faulthandler._sigsegv()  # type: ignore[attr-defined]  # private, as in CPython's test


def _crash_with_data(data: Any) -> None:
    """Induces a segfault with dummy data in input."""
    _crash()


def _exit() -> None:
    """Induces a sys exit with exitcode 1."""
    sys.exit(1)


def _raise_error(err: type[BaseException]) -> None:
    """Function that raises an Exception in process."""
    raise err()


def _raise_error_ignore_stderr(err: type[BaseException]) -> None:
    """Function that raises an Exception in process and ignores stderr."""
    import io

    sys.stderr = io.StringIO()
    raise err()


def _return_instance(cls: type[Any]) -> Any:
    """Function that returns a instance of cls."""
    return cls()


class CrashAtPickle:
    """Bad object that triggers a segfault at pickling time."""

    def __reduce__(self) -> Any:
        _crash()


class CrashAtUnpickle:
    """Bad object that triggers a segfault at unpickling time."""

    def __reduce__(self) -> Any:
        return _crash, ()


class ExitAtPickle:
    """Bad object that triggers a process exit at pickling time."""

    def __reduce__(self) -> Any:
        _exit()


class ExitAtUnpickle:
    """Bad object that triggers a process exit at unpickling time."""

    def __reduce__(self) -> Any:
        return _exit, ()


class ErrorAtPickle:
    """Bad object that triggers an error at pickling time."""

    def __reduce__(self) -> Any:
        raise pickle.PicklingError("Error in pickle")


class ErrorAtUnpickle:
    """Bad object that triggers an error at unpickling time."""

    def __reduce__(self) -> Any:
        return _raise_error_ignore_stderr, (pickle.UnpicklingError,)


class EventfulGCObj:
    """Sets a ``multiprocessing.Manager`` event when it is collected (in the worker)."""

    def __init__(self, mgr: Any) -> None:
        self.event = mgr.Event()

    def __del__(self) -> None:
        self.event.set()


def put(queue: Any, value: Any) -> Any:
    """Put ``value`` on a ``multiprocessing.Manager`` queue; return what the proxy said."""
    queue.put(value)
    return value
