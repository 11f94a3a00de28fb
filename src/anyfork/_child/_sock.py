"""``Socket``: the function's socket in a child that has not loaded the ``socket`` module (why
and how: docs/design.md, "The function's socket in an exec'd child")."""

from __future__ import annotations

import _socket
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any


def _socket_module() -> Any:
    """The ``socket`` module, imported on first need (a dict lookup once it is loaded)."""
    module = sys.modules.get("socket")
    if module is None:
        module = __import__("socket")
    return module


class Socket(_socket.socket):
    """A ``socket.socket`` in all but type, made without importing ``socket``."""

    # The layout of socket.socket, so that borrowed methods find the attributes they use.
    __slots__ = ("__weakref__", "_closed", "_io_refs")

    def __init__(
        self, family: int = -1, type: int = -1, proto: int = -1, fileno: int | None = None
    ):
        _socket.socket.__init__(self, family, type, proto, fileno)
        self._io_refs = 0
        self._closed = False

    def __enter__(self) -> Socket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._closed:
            self.close()

    def __getattr__(self, name: str) -> Any:
        # Only names the C type lacks arrive here: accept, makefile, sendfile,
        # get_inheritable...  They are plain functions of socket.socket; bound to us they work
        # unchanged, because we have the same attributes.
        attr = _socket_module().socket.__dict__.get(name)
        if not hasattr(attr, "__code__"):  # functions only: its slot descriptors are not ours
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return attr.__get__(self, type(self))

    def __repr__(self) -> str:
        return _socket_module().socket.__repr__(self)  # type: ignore[no-any-return]

    def __getstate__(self) -> object:
        raise TypeError(f"cannot pickle {type(self).__name__!r} object")

    @property
    def family(self) -> Any:
        sock = _socket_module()
        return sock._intenum_converter(_socket.socket.family.__get__(self), sock.AddressFamily)

    @property
    def type(self) -> Any:
        sock = _socket_module()
        return sock._intenum_converter(_socket.socket.type.__get__(self), sock.SocketKind)

    def dup(self) -> Socket:
        import os

        family = _socket.socket.family.__get__(self)
        kind = _socket.socket.type.__get__(self)
        return Socket(family, kind, self.proto, fileno=os.dup(self.fileno()))

    # Closing follows socket.socket: the fd stays open while a makefile() file uses it.

    def _decref_socketios(self) -> None:
        if self._io_refs > 0:
            self._io_refs -= 1
        if self._closed:
            self.close()

    def _real_close(self) -> None:
        _socket.socket.close(self)

    def close(self) -> None:
        self._closed = True
        if self._io_refs <= 0:
            self._real_close()

    def detach(self) -> int:
        self._closed = True
        return _socket.socket.detach(self)
