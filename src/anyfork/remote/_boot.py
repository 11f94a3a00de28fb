"""How anyfork gets onto a remote host that has nothing but ``python3``: the bootstrap and the
loader.  Runs remotely (Python 3.8 or newer): stdlib only, nothing newer than 3.8.

The ssh session's command is ``exec PYTHON -c BOOTSTRAP`` (each word quoted for the remote
shell).  Over the session's stdin and stdout, then::

    remote                                          parent (anyfork.remote._host)
    ------                                          -----------------------------
    BOOTSTRAP: "anyfork-boot 1 3.11.7"  ------->   checks the version (>= 3.8), else
               (a Python < 3.8 exits here)          RemoteHostError "too old"
               reads exactly N bytes    <-------   12 ASCII digits N, then this module's source
    load():    a private directory, 0700
               reads the archive        <-------   entries: u32 name size, name, u32 data size,
                                                    data; a name starting with "@" is a setting;
                                                    a zero name size ends it
               writes DIR/lib/..., imports the agent from there (``_agent``, shipped as
               ``_anyfork_agent``), which says READY (or "anyfork-failed <why>" on any error)

The bootstrap is one line without single quotes, so that any shell quotes it the same way, and
parses in every Python (2.7 included) so that an old one can say how old it is.  Every read is
an exact ``os.read`` of fd 0: nothing the agent reads later is swallowed by a buffer.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable, Mapping, Sequence
    from typing import NoReturn

#: Bumped whenever the bootstrap, the loader or the agent's streams change.
PROTOCOL = 1

#: The oldest Python the child side runs on.
MIN_PYTHON = (3, 8)

#: ``python3 -c BOOTSTRAP``: one line, no single quote (see the module docstring).  Exit status
#: 90: the Python is too old; 91: the parent went away during the transfer.
BOOTSTRAP = (
    "import os,sys;v=sys.version_info;"
    'os.write(1,("\\nanyfork-boot %d %d.%d.%d\\n"%(('
    + str(PROTOCOL)
    + ",)+tuple(v[:3]))).encode());"
    "v<" + repr(MIN_PYTHON).replace(" ", "") + " and os._exit(90);"
    'exec("def r(n):\\n b=bytes()\\n while len(b)<n:\\n  c=os.read(0,n-len(b))\\n'
    '  if not c:os._exit(91)\\n  b+=c\\n return b\\nexec(r(int(r(12))))")'
)

#: The first word of the bootstrap's line, and of the agent's answers.
BOOT_LINE = b"anyfork-boot "
READY_LINE = b"anyfork-ready "
FAILED_LINE = b"anyfork-failed "

#: The module name the agent is shipped as (the loader imports it from the private directory).
AGENT_MODULE = "_anyfork_agent"

_MAX_NAME = 4096


def _u32(data: bytes) -> int:
    return int.from_bytes(data, "big")


def pack_archive(files: Sequence[tuple[str, bytes]], settings: Mapping[str, str]) -> bytes:
    """The archive ``unpack_archive`` reads (the parent makes it)."""
    parts: list[bytes] = []
    entries = [*files, *((f"@{key}", value.encode("utf-8")) for key, value in settings.items())]
    for name, data in entries:
        encoded = name.encode("utf-8")
        parts += [len(encoded).to_bytes(4, "big"), encoded, len(data).to_bytes(4, "big"), data]
    parts.append(bytes(4))
    return b"".join(parts)


def unpack_archive(read: Callable[[int], bytes], lib: str) -> dict[str, str]:
    """Write the archive's files under ``lib`` (new files, mode 0600, in directories of mode
    0700); return its settings.  Raises ``ValueError`` for a name that would leave ``lib``."""
    settings: dict[str, str] = {}
    while True:
        size = _u32(read(4))
        if not size:
            return settings
        if size > _MAX_NAME:
            raise ValueError("a name in the archive is too long")
        name = read(size).decode("utf-8")
        data = read(_u32(read(4)))
        if name.startswith("@"):
            settings[name[1:]] = data.decode("utf-8")
            continue
        parts = name.split("/")
        if name.startswith("/") or "" in parts or "." in parts or ".." in parts:
            raise ValueError(f"a bad path in the archive: {name!r}")
        path = os.path.join(lib, *parts)
        os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)


def load(read: Callable[[int], bytes]) -> NoReturn:
    """Receive the archive into a new private directory, then hand over to the agent.

    Never returns: the agent exits the process (or this does, after saying why it failed)."""
    base = ""
    try:
        import tempfile

        base = _private_dir(tempfile)
        lib = os.path.join(base, "lib")
        os.mkdir(lib, 0o700)
        settings = unpack_archive(read, lib)
        # Ours come first, whatever the remote host has installed (an anyfork among it).
        sys.path.insert(0, lib)
        # Bytecode caches in the private directory, written by the agent's imports, so that
        # every interpreter it execs reads them instead of compiling the child side again.
        sys.dont_write_bytecode = False
        serve: Callable[[], NoReturn] = __import__(AGENT_MODULE).main(base, settings).serve
    except BaseException as exc:
        _fail(base, exc)
    serve()  # (READY has been said: from here on the agent reports its own failures)


def _private_dir(tempfile: object) -> str:
    """A new directory only this user can enter, with a short path: unix socket paths are
    limited to ~100 bytes, and the agent's socket lives in it."""
    mkdtemp = tempfile.mkdtemp  # type: ignore[attr-defined]  # the tempfile module, passed in
    base: str = mkdtemp(prefix="anyfork-")
    if len(base) > 80:
        os.rmdir(base)
        base = mkdtemp(prefix="anyfork-", dir="/tmp")
    os.chmod(base, 0o700)
    return base


def _fail(base: str, exc: BaseException) -> NoReturn:
    """Tell the parent why the host cannot be used, remove what was made, exit."""
    message = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    try:
        os.write(1, FAILED_LINE + message.encode("utf-8", "replace") + b"\n")
    finally:
        if base:
            import shutil

            shutil.rmtree(base, ignore_errors=True)
        os._exit(92)


if __name__ == "__main__":  # pragma: no cover - the remote stage 2 (exec'd by BOOTSTRAP)
    load(globals()["r"])
