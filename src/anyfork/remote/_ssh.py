"""Running OpenSSH's ``ssh``: the master connection of a host, its control commands, and what a
failed ssh means.

Every ``ssh`` is started with ``posix_spawnp`` and an argument vector, never through a local
shell; the remote command is the one string ssh hands to the remote user's shell, and every
word of it is quoted (``shlex.quote``).  The destination follows ``--``, so it can never be read
as an option.  ssh runs in a session of its own (``setsid``): a Ctrl-C meant for the program
does not cut the connection, and ssh has no terminal to prompt on (``BatchMode`` too: a key that
needs a passphrase fails at once instead of waiting for an answer nobody gives).

Options, in the order ssh reads them (for each option the first value wins):

1. ours, fixed: the master (``-M``, ``-S``, ``ControlPersist=no``), no pty, no agent or X11
   forwarding, no ``RemoteCommand``/``LocalCommand`` from a config file, ``BatchMode``, and
   ``-E LOG`` (ssh's own messages go to a file in the private directory, where the error path
   reads them; the remote processes' stderr still reaches ours);
2. the user's ``ssh_options`` (``-F``, ``-i``, ``-p``, ``-o ...``);
3. ours, defaults the user may override: keepalives (``KEEPALIVE``: a connection that goes
   silent is given up after about 20 s), ``ConnectTimeout``, ``LogLevel=ERROR``.
"""

from __future__ import annotations

import math
import os
import shlex
import signal
from collections.abc import Sequence

from .._errors import RemoteHostError
from ._boot import BOOTSTRAP, MIN_PYTHON

#: ``ServerAliveInterval`` and ``ServerAliveCountMax``: a connection that stops answering is
#: given up after at most interval x (count + 1) seconds, and every call on it fails then.
KEEPALIVE = (5, 3)

#: ssh's exit status when ssh itself failed (cannot connect, authenticate, ...).
SSH_FAILED = 255

_FIXED = (
    *("-T", "-a", "-x"),
    *("-o", "ControlPersist=no"),
    *("-o", "BatchMode=yes"),
    *("-o", "RemoteCommand=none"),
    *("-o", "PermitLocalCommand=no"),
)

#: What ssh says (in its log) for each failure, and how we name it.
_CAUSES = (
    ("authentication failed", ("Permission denied", "Too many authentication failures")),
    (
        "host key verification failed",
        (
            "Host key verification failed",
            "REMOTE HOST IDENTIFICATION HAS CHANGED",
            "host key for",
            "No matching host key",
        ),
    ),
    ("connection refused", ("Connection refused",)),
    (
        "host unreachable",
        (
            "Connection timed out",
            "No route to host",
            "Network is unreachable",
            "Could not resolve hostname",
            "Name or service not known",
            "Temporary failure in name resolution",
            "Connection reset",
            "Connection closed by",
            "kex_exchange_identification",
        ),
    ),
    ("connection lost", ("Timeout, server", "closed by remote host", "Broken pipe")),
)


def master_argv(
    ssh: Sequence[str],
    options: Sequence[str],
    destination: str,
    control: str,
    log: str,
    python: Sequence[str],
    timeout: float,
) -> list[str]:
    """The master: one connection, whose own session runs the bootstrap."""
    remote = shlex.join(["exec", *python, "-c", BOOTSTRAP])
    interval, count = KEEPALIVE
    return [
        *ssh,
        *("-M", "-S", control, "-E", log),
        *_FIXED,
        *options,
        *("-o", f"ServerAliveInterval={interval}", "-o", f"ServerAliveCountMax={count}"),
        *("-o", f"ConnectTimeout={max(1, math.ceil(timeout))}", "-o", "LogLevel=ERROR"),
        "--",
        destination,
        remote,
    ]


def forward_argv(
    ssh: Sequence[str],
    options: Sequence[str],
    destination: str,
    control: str,
    local: str,
    remote: str,
) -> list[str]:
    """Ask the master to forward the unix socket ``local`` to ``remote`` on the host."""
    return [
        *ssh,
        "-S",
        control,
        *options,
        "-O",
        "forward",
        "-L",
        f"{local}:{remote}",
        "--",
        destination,
    ]


def spawn(argv: Sequence[str], stdio: int, destination: str) -> int:
    """Start ``argv`` in a session of its own, with ``stdio`` as its stdin and stdout (stderr
    stays ours); return its pid."""
    try:
        return os.posix_spawnp(
            argv[0],
            list(argv),
            os.environ,
            file_actions=[(os.POSIX_SPAWN_DUP2, stdio, 0), (os.POSIX_SPAWN_DUP2, stdio, 1)],
            setsid=True,
            setsigdef=(signal.SIGPIPE, signal.SIGINT),
        )
    except OSError as exc:
        raise RemoteHostError(
            f"cannot connect to {destination!r}: could not run {argv[0]!r} ({exc})", destination
        ) from exc


def log_tail(path: str, limit: int = 2000) -> str:
    """The end of ssh's log (its error messages), on one line."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return " / ".join(line.strip() for line in text.splitlines() if line.strip())


def failure(
    destination: str, returncode: int | None, log: str, python: Sequence[str], junk: bytes = b""
) -> RemoteHostError:
    """The error for an ssh master that ended before the agent said READY."""
    said = log_tail(log)
    if returncode == SSH_FAILED or returncode is None or said:
        cause = next(
            (name for name, marks in _CAUSES if any(mark in said for mark in marks)),
            "ssh failed",
        )
        how = f"ssh exited with status {returncode}" if returncode is not None else "ssh ended"
        detail = f"{how}: {said}" if said else how
        return RemoteHostError(
            f"cannot connect to {destination!r}: {cause} ({detail})", destination
        )
    shown = shlex.join(python)
    if returncode in (126, 127):
        what = "was not found" if returncode == 127 else "cannot be executed"
        return RemoteHostError(
            f"{shown} {what} on {destination!r} (the remote shell exited with status "
            f"{returncode}); anyfork needs Python {'.'.join(map(str, MIN_PYTHON))} or newer "
            f"there: pass python= the path of one",
            destination,
        )
    output = junk.decode("utf-8", "replace").strip()[-500:]
    extra = f"; it printed: {output!r}" if output else "; its stderr is ours"
    return RemoteHostError(
        f"the bootstrap ({shown}) on {destination!r} exited with status {returncode}{extra}",
        destination,
    )


def too_old(destination: str, python: Sequence[str], version: str) -> RemoteHostError:
    return RemoteHostError(
        f"{shlex.join(python)} on {destination!r} is Python {version}, too old: anyfork needs "
        f"Python {'.'.join(map(str, MIN_PYTHON))} or newer there (pass python= the path of one)",
        destination,
    )
