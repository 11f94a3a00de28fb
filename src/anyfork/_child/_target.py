"""The function ``run`` calls, and what it is given: the function found by its reference, the
received fds as the objects a user expects, the socket.  Imports as ``_serve`` does (``stat``,
``fcntl`` and ``io`` only when a passed fd needs them, ``socket`` only if loaded: ``_sock``).
"""

from __future__ import annotations

import _socket
import os
import sys

from . import _sock, _wire
from ._forking import track

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import socket
    from collections.abc import Callable
    from typing import Any

#: This process is a copy of the main program (an early or main template, or forked from one):
#: its ``__main__`` is the program itself, as it was at the fork.
forked_main = False


class Fd:
    """A received file descriptor in the argument list (kept apart from plain values), and how
    to hand it over (``_wire.FD_RAW``...)."""

    __slots__ = ("fd", "spec")

    def __init__(self, fd: int, spec: str) -> None:
        self.fd = fd
        self.spec = spec


#: The names a function of the parent's main program goes by: multiprocessing's name for the
#: main script imported in a child, too (a reference made in such a child).
MAIN_NAMES = ("__main__", "__mp_main__")


def resolve(ref: str) -> Callable[..., object]:
    """Find the function ``ref`` names: ``"module:qualname"``, or a bare name in ``__main__``
    (where a name not defined yet makes the process import the parent's main script: ``_main``).
    """
    module_name, sep, qualname = ref.partition(":")
    if not sep or module_name in MAIN_NAMES:
        module_name, qualname = "__main__", qualname if sep else ref
    if not qualname:
        raise ValueError(f"function reference {ref!r} names no function")
    obj: object = lib(module_name)
    for depth, part in enumerate(qualname.split(".")):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            if module_name != "__main__" or depth:
                raise AttributeError(f"{module_name!r} has no attribute {qualname!r}") from None
            from . import _main

            raise AttributeError(_main.missing(qualname, forked_main)) from None
    if not callable(obj):
        raise TypeError(f"{ref!r} is not callable")
    return obj


def lib(name: str) -> Any:
    """A module, by dict lookup when loaded: an ``import`` statement's machinery copies pages
    in a forked child (measured: a fifth of its cost on the way to ``run``, 711 -> 895/s)."""
    module = sys.modules.get(name)
    if module is None:
        __import__(name)
        module = sys.modules[name]
    return module


def socket_type() -> type[socket.socket]:
    """``socket.socket`` if the module is loaded; else the look-alike that spares a fresh
    interpreter importing it (see ``_sock``)."""
    module = sys.modules.get("socket")
    if module is not None:
        return module.socket  # type: ignore[no-any-return]
    return _sock.Socket  # type: ignore[return-value]  # socket.socket's methods, not its type


def user_socket(raw: _socket.socket) -> socket.socket:
    return socket_type()(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, raw.detach())


def wrap(arg: Fd) -> object:
    """Turn a received fd into what a user expects: a socket, a file object (buffered and of
    the kind the parent sent: ``_wire.FD_BUFFERED``, ``FD_TEXT``), or a directory's plain fd."""
    fd, spec = arg.fd, arg.spec
    stat = lib("stat")
    mode = os.fstat(fd).st_mode
    if stat.S_ISSOCK(mode):
        return socket_type()(fileno=fd)
    if stat.S_ISDIR(mode):
        return fd
    fcntl = lib("fcntl")
    access = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    file_mode = {os.O_RDONLY: "r", os.O_WRONLY: "w"}.get(access, "r+")
    raw = open(fd, file_mode + "b", buffering=0)  # noqa: SIM115  # the user owns it now
    if spec == _wire.FD_RAW:
        return raw
    io = lib("io")
    kind = {"r": io.BufferedReader, "w": io.BufferedWriter}.get(file_mode, io.BufferedRandom)
    try:
        buffered = kind(raw)  # (BufferedRandom: a seekable file; else raw, below)
    except (OSError, ValueError):
        return raw
    file = buffered
    if spec != _wire.FD_BUFFERED:
        encoding, errors, line_buffering = _wire.unpack_text_spec(spec)
        file = io.TextIOWrapper(buffered, encoding, errors, line_buffering=line_buffering)
        file.mode = file_mode  # (as open() sets it)
    if file_mode != "r":
        track(file)
    return file


def apply(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
    """The function a ``PoolExecutor`` without a fixed function serves: ``fn`` arrives first,
    with its arguments (by reference through pickle, or by value with cloudpickle).  Flat, so
    that a ``map``'s batch is ``map(apply, fns, *columns)``: no tuple per item."""
    return fn(*args, **kwargs)
