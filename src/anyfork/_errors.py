"""Every exception anyfork raises, in one small tree, and ``rebuild`` (both in docs/design.md,
"Error handling")."""

from __future__ import annotations

import builtins
import contextlib
import pickle
import sys

from ._child import _records
from ._util import add_note, publish

__all__ = [
    "AnyforkError",
    "ClosedError",
    "DecodeError",
    "EncodeError",
    "ProtocolError",
    "RemoteError",
    "RemoteHostError",
    "RemoteTraceback",
    "SerializationError",
    "SpawnError",
    "WorkerDiedError",
]


class AnyforkError(Exception):
    """Base class of every error anyfork raises itself."""


class SpawnError(AnyforkError):
    """The process could not be created, or it died before ``run`` handed its socket over."""


class RemoteHostError(SpawnError):
    """A remote host (``anyfork.remote.Host``) cannot be used: ssh could not connect (host
    unreachable, connection refused, authentication failed, host key mismatch), the remote
    Python is missing or older than 3.8, or the connection to the host was lost.

    ``host`` is the destination as given to ``Host``; the message names it and says why.
    """

    def __init__(self, message: str, host: str = ""):
        super().__init__(message)
        self.host = host

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.host))


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

    @property
    def tb(self) -> str:
        """The traceback's text, where ``concurrent.futures.process``'s remote traceback keeps
        it (code written for ``ProcessPoolExecutor`` reads ``exc.__cause__.tb``)."""
        return self.text


def describe_returncode(returncode: int | None) -> str:
    """``"exit status 3"``, ``"killed by SIGKILL"``, ``"exit status unknown"``."""
    if returncode is None:
        return "exit status unknown"
    if returncode < 0:
        import signal  # here: the sans-IO pool core imports this module, and signal is I/O

        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exit status {returncode}"


def rebuild(record: bytes | bytearray, context: str, *, ours: bool) -> BaseException:
    """The exception a child's error record (``anyfork._child._records``) stands for.

    The exception itself when it unpickles here; else the builtin type of that name; else one of
    anyfork's own errors by name; else ``RemoteError`` (with ``type_name`` and the traceback).
    The child's traceback is the ``__cause__`` (a ``RemoteTraceback``) and ``context`` (which
    process, which command) a note.  ``ours``: the failure of one of anyfork's own commands (a
    ``require``, an ``eval``, finding the function, an RPC worker's start-up): the exception is
    made an ``AnyforkError`` too (see :func:`also_anyfork`), so that ``except AnyforkError``
    catches every failure anyfork reports while ``except ModuleNotFoundError`` still works.
    Raises ``ProtocolError`` for bytes that are not a record.
    """
    try:
        pickled, module, qualname, message, tb = _records.unpack(record)
    except _records.RecordError as broken:
        raise ProtocolError(f"a broken error record ({broken}) {context}") from None
    exc: BaseException | None = None
    if pickled:
        try:
            loaded = pickle.loads(pickled)
        except Exception:
            loaded = None
        if isinstance(loaded, BaseException):
            exc = loaded
    if exc is None or not isinstance(exc, Exception):
        # Not rebuildable, or a SystemExit (an eval that called sys.exit): raising that in the
        # parent would end the parent.
        exc = _by_name(module, qualname, message, tb)
    if ours and isinstance(exc, Exception):
        exc = also_anyfork(exc)
    exc.__cause__ = RemoteTraceback(tb)
    add_note(exc, context)
    return exc


def _by_name(module: str, qualname: str, message: str, tb: str) -> BaseException:
    """An exception that did not travel pickled: a builtin or one of ours, rebuilt from its
    message; anything else a ``RemoteError``."""
    cls = {"builtins": builtins, "anyfork": sys.modules[__name__]}.get(module)
    kind = getattr(cls, qualname, None) if cls is not None and "." not in qualname else None
    if isinstance(kind, type) and issubclass(kind, Exception) and kind is not RemoteTraceback:
        try:
            exc: BaseException = kind(message)
        except Exception:
            pass
        else:
            if isinstance(exc, SerializationError):
                exc.side = "child"
            return exc
    name = qualname if module == "builtins" else f"{module}.{qualname}"
    return RemoteError(f"{name}: {message}", name, tb)


#: The class made for each exception type by ``also_anyfork``, made once per type.
_ALSO: dict[type[BaseException], type[BaseException]] = {}

#: Attributes that builtin exception types keep in C fields (not in ``__dict__``).
_C_FIELDS = (
    *("name", "path", "name_from", "obj", "errno", "strerror", "filename", "filename2"),
    *("code", "value", "encoding", "object", "start", "end", "reason", "msg", "lineno"),
    *("offset", "text", "end_lineno", "end_offset", "print_file_and_line"),
)


def also_anyfork(exc: Exception) -> Exception:
    """``exc`` as an instance of a class deriving from both its type and :class:`AnyforkError`
    (made once per type, shown and pickled as the original type, as Ray does for task errors).

    An ``AnyforkError`` already, or a type that cannot be subclassed, comes back unchanged."""
    if isinstance(exc, AnyforkError):
        return exc
    try:
        new = _remake(type(exc), exc.args, _state(exc))
    except Exception:
        return exc
    new.__cause__, new.__context__ = exc.__cause__, exc.__context__
    new.__suppress_context__ = exc.__suppress_context__
    new.__traceback__ = exc.__traceback__
    return new  # type: ignore[return-value]  # an instance of a subclass of type(exc)


_MISSING = object()


def _state(exc: BaseException) -> dict[str, object]:
    """What ``exc`` holds beyond its args: its ``__dict__`` and the C fields that are set."""
    state = dict(exc.__dict__)
    for field in _C_FIELDS:
        value = getattr(exc, field, _MISSING)
        if value is not _MISSING:
            state[field] = value
    return state


def _remake(
    cls: type[BaseException], args: tuple[object, ...], state: dict[str, object]
) -> BaseException:
    """An instance of ``cls``'s ``also_anyfork`` class with these args and state (unpickling
    uses it too)."""
    also = _ALSO.get(cls)
    if also is None:

        def __reduce__(self: BaseException) -> tuple[object, ...]:
            return (_remake, (cls, self.args, _state(self)))

        namespace = {
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__,
            "__reduce__": __reduce__,
        }
        also = _ALSO[cls] = type(cls.__name__, (cls, AnyforkError), namespace)
    new = also.__new__(also, *args)
    for name, value in state.items():
        with contextlib.suppress(AttributeError, TypeError, ValueError):
            if getattr(new, name, _MISSING) != value:
                setattr(new, name, value)
    return new


publish(globals())
