"""Functions the benchmark runs in child processes.

Stdlib only, and nothing at import time: anyfork children import this module on their way to
the function, so whatever it imported would be counted in every row.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from multiprocessing.connection import Connection


def hello(sock: socket.socket) -> None:
    """anyfork child: the first byte the parent reads; returning ends the process (EOF)."""
    sock.sendall(b"x")


def mp_hello(conn: Connection) -> None:
    """multiprocessing child: the same single byte, through a Pipe end."""
    conn.send_bytes(b"x")
    conn.close()


def hold(sock: socket.socket) -> None:
    """anyfork child that stays alive until the parent closes its end (to inspect it in /proc)."""
    sock.sendall(b"x")
    while sock.recv(4096):
        pass


def double(x: int) -> int:
    """RPC and pool worker function of the soak run: trivial work, so the machinery is what runs."""
    return 2 * x


def ident(x: object) -> object:
    """The trivial function of the pool benchmark's map rows (every pool pickles it by name)."""
    return x
