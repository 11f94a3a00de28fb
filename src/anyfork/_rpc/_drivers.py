"""RPC, parent side: what both drivers of a connection (``_client``, ``_blocking``) share."""

from __future__ import annotations

import contextlib
from typing import Any

from .._errors import AnyforkError
from ._connection import FLUSH, KILL, READY, RpcConnection

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    import weakref

    from .._core._process import Process

WOULD_BLOCK = "would block"
#: How long a driver waits for a dead worker's exit status (soon known: its socket is closed).
EXIT_STATUS_WAIT = 5.0
#: What ``Process.wait`` raises when the exit status cannot be learnt: the calls fail anyway.
EXIT_UNKNOWN = (TimeoutError, ChildProcessError, OSError, AnyforkError)


def recv_some(conn: RpcConnection, sock: socket.socket, flags: int) -> str | None:
    """One read into ``conn``: what ``RpcConnection.received`` asks, or ``WOULD_BLOCK``."""
    buf = conn.dec.get_buffer()
    try:
        n = sock.recv_into(buf, 0, flags)
    except (BlockingIOError, InterruptedError):
        return WOULD_BLOCK
    except ConnectionResetError:
        n = 0
    except OSError as exc:
        return conn.read_failed(exc)
    finally:
        buf.release()
    return conn.received(n)


class Facts:
    """What both clients share: their read-only facts, ``_act`` and ``_close_socket``."""

    _conn: RpcConnection
    _proc: Process  # the worker (a pool kills it through it: a remote one by its host)
    _sock: socket.socket | None
    _finalizer: weakref.finalize[..., Any]

    def _act(self, action: str | None) -> None:
        """``Process.kill``: never a pid that may have been reused."""
        if action == KILL:
            with contextlib.suppress(ProcessLookupError):  # (a worker that sent READY has a pid)
                self._proc.kill()
        elif action == FLUSH:
            self._kick()

    def _kick(self) -> None:
        """(The blocking client writes as it waits.)"""

    def _close_socket(self) -> None:
        self._finalizer.detach()
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        self._conn.io_closed()

    def __repr__(self) -> str:
        conn = self._conn
        state = "open" if conn.state == READY else conn.state
        return f"<anyfork.{type(self).__name__} pid={conn.pid} {conn.backend} {state}>"

    @property
    def pid(self) -> int | None:
        """The worker's pid."""
        return self._conn.pid

    @property
    def returncode(self) -> int | None:
        """The worker's exit status once the client has learnt it (after ``aclose()``/
        ``close()``, or its death), else ``None``."""
        return self._conn.returncode

    @property
    def usable(self) -> bool:
        """``True`` while the client takes new calls: open, not closing, its connection not
        failed, and its worker not condemned (a sync-backend worker is killed when a call it
        runs is abandoned, and takes no call after that decision)."""
        return self._conn.usable

    @property
    def batchable(self) -> bool:
        """``True`` if the serialiser can carry a batch of calls (all but ``"bytes"`` and
        ``"str"``, which carry exactly one value): ``map`` batches only then."""
        return self._conn.codec.batches
