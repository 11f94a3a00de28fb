"""A forked child's connection, fetched from the host's agent (``anyfork.remote``; how:
docs/design.md, "Remote children's connections").  Runs remotely, on Python 3.8: stdlib only.
"""

from __future__ import annotations

import _socket
import os

from . import _wire
from ._forking import fds_from

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from ._forking import Forker

#: The agent's requests (the first frame of a connection to it; see ``anyfork.remote._agent``).
PARK = ord("p")  # payload: token; the parent's connection for the child, kept by the agent
FETCH = ord("j")  # payload: token; a template's: the agent answers with the parked connection

#: The longest token the agent takes.
MAX_TOKEN = 64

#: How long a template waits for the agent to hand over the connection (the parent parks it
#: before it sends the FORK frame, but through another channel of the ssh connection).
FETCH_WAIT = 30.0


def fetch(payload: bytes) -> int:
    """The parked connection a FORK frame without an fd names (payload: [agent socket path,
    token]); raises ``OSError`` (the template reports FORK_FAILED and goes on serving) or
    ``WireError`` (a broken payload)."""
    path, token = _wire.unpack_strings(payload)
    if not token or len(token) > MAX_TOKEN:
        raise _wire.WireError("a FORK frame without a socket names no connection to fetch")
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(FETCH_WAIT)
        sock.connect(path)
        sock.sendall(_wire.frame(FETCH, token.encode("ascii")))
        data, anc, _, _ = sock.recvmsg(1, _socket.CMSG_SPACE(4))
        fds = fds_from(anc)
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise OSError(f"the host's agent handed over no connection ({data!r})")
        return fds[0]
    finally:
        sock.close()


def fetch_or_report(server: Forker, payload: bytes) -> list[int]:
    """``fetch`` for ``server``'s FORK frame: ``[fd]``, or ``[]`` once FORK_FAILED is reported
    (the template goes on serving, as after a failed fork)."""
    try:
        return [fetch(payload)]
    except OSError as exc:
        server.report(_wire.FORK_FAILED, _wire.pack_values([f"fetching its connection: {exc}"]))
        return []
