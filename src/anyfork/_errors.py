"""Every exception anyfork raises, in one small tree::

    AnyforkError(Exception)           base of everything below
    ├── SpawnError                    the process could not be created or died before ``run``:
    │                                 exec failed, its template is dead, fork failed
    ├── WorkerDiedError               a process died while calls were outstanding
    │                                 (.pid, .returncode, .signal)
    ├── ProtocolError                 the byte stream broke its rules (a bug or a corrupted stream)
    ├── SerializationError            a value could not be encoded or decoded (.side)
    │   ├── EncodeError
    │   └── DecodeError
    ├── RemoteError                   the child raised an exception the parent could not rebuild
    │                                 (.type_name, .remote_traceback)
    └── ClosedError                   a process or client used after ``run``/``close``

Errors raised by a child's code travel back as their own type when the parent can rebuild it
(builtins, and for RPC anything picklable), with the child's traceback attached as ``__cause__``
(a ``RemoteTraceback``).  Timeouts are the builtin ``TimeoutError``; cancellation propagates
unchanged.
"""

from __future__ import annotations

import builtins
import signal as _signal_mod

from ._util import publish

__all__ = [
    "AnyforkError",
    "ClosedError",
    "DecodeError",
    "EncodeError",
    "ProtocolError",
    "RemoteError",
    "RemoteTraceback",
    "SerializationError",
    "SpawnError",
    "WorkerDiedError",
]


class AnyforkError(Exception):
    """Base class of every error anyfork raises itself."""


class SpawnError(AnyforkError):
    """The process could not be created, or it died before ``run`` handed its socket over."""


class WorkerDiedError(AnyforkError):
    """A process died while it owed its creator something (a reply, a result).

    ``returncode`` follows ``subprocess``: the exit status, or ``-N`` for death by signal N;
    ``None`` when it is not known (a process that is not our direct child and whose template
    did not report it in time).
    """

    def __init__(self, message: str, pid: int | None, returncode: int | None):
        super().__init__(message)
        self.pid = pid
        self.returncode = returncode

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.pid, self.returncode))

    @property
    def signal(self) -> int | None:
        """The signal that killed the process, if one did."""
        if self.returncode is not None and self.returncode < 0:
            return -self.returncode
        return None


class ProtocolError(AnyforkError):
    """The peer sent bytes that break the protocol; the connection is unusable."""


class SerializationError(AnyforkError):
    """A value could not be serialised or deserialised; ``side`` is ``"parent"`` or ``"child"``."""

    def __init__(self, message: str, side: str = "parent"):
        super().__init__(message)
        self.side = side

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.side))


class EncodeError(SerializationError):
    """A value could not be encoded."""


class DecodeError(SerializationError):
    """Bytes could not be decoded into a value."""


class RemoteError(AnyforkError):
    """The child raised an exception whose type the parent cannot rebuild."""

    def __init__(self, message: str, type_name: str = "", remote_traceback: str = ""):
        super().__init__(message)
        self.type_name = type_name
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.type_name, self.remote_traceback))


class ClosedError(AnyforkError):
    """The object was used after ``run``, ``to_fh`` or ``close``."""


class RemoteTraceback(Exception):
    """Carries a child's formatted traceback; set as ``__cause__`` of a rebuilt exception."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "\n\n" + self.text.rstrip()


def describe_returncode(returncode: int | None) -> str:
    if returncode is None:
        return "exit status unknown"
    if returncode < 0:
        try:
            name = _signal_mod.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exit status {returncode}"


def rebuild(
    module: str, qualname: str, message: str, remote_tb: str, context: str
) -> BaseException:
    """Turn a child's error report into the exception to raise in the parent.

    Builtin exception types are rebuilt as themselves (a failed ``require`` raises
    ``ModuleNotFoundError``); anything else becomes ``RemoteError``.  Either way the child's
    traceback is the ``__cause__``, and ``context`` says which process and which command.
    """
    exc: BaseException
    cls = getattr(builtins, qualname, None) if module == "builtins" else None
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            exc = cls(f"{message} ({context})")
        except Exception:
            exc = RemoteError(f"{qualname}: {message} ({context})", qualname, remote_tb)
    else:
        name = qualname if module == "builtins" else f"{module}.{qualname}"
        exc = RemoteError(f"{name}: {message} ({context})", name, remote_tb)
    exc.__cause__ = RemoteTraceback(remote_tb)
    return exc


publish(globals())
