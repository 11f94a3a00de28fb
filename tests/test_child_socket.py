"""What an exec'd child is made of: the shipped child code, and the socket its function gets.

A fresh interpreter that has not loaded ``socket`` hands the function an
``anyfork._child._sock.Socket``
(a ``socket.socket`` in all but type); everything else gets a ``socket.socket``.  The functions
run here are defined with ``eval``, so that nothing but the test itself imports ``socket``.
"""

from __future__ import annotations

import ast
import os
import pickle
import socket
import sys

import pytest

import anyfork
from anyfork._child import _serve, _sock
from anyfork._core import _spawn
from helpers import eventually, recv_all, recv_exactly

CHILD_CODE = r"""
import sys

def kind(obj):
    return type(obj).__module__ + "." + type(obj).__qualname__

def describe(sock, *args):
    facts = [kind(sock), "socket" in sys.modules] + [kind(a) for a in args]
    sock.sendall(repr(facts).encode())

def through_makefile(sock):
    # socket.socket's own methods, borrowed on first use, on the look-alike.
    stream = sock.makefile("rwb")
    line = stream.readline()
    stream.write(b"got " + line)
    stream.flush()
    facts = [repr(sock.family), repr(sock.type), repr(sock), sock.get_inheritable()]
    stream.write(repr(facts).encode() + b"\n")
    stream.close()
    sock.close()

def close_while_file_open(sock):
    # As with socket.socket: close() leaves the fd to the file that still uses it.
    stream = sock.makefile("wb")
    sock.close()
    stream.write(b"still open")
    stream.close()

def accept_one(sock, listener):
    conn, _ = listener.accept()
    with conn:
        conn.sendall(kind(conn).encode())
    with listener:
        pass
    sock.sendall(repr([kind(listener), listener.fileno()]).encode())

def dup_and_detach(sock):
    copy = sock.dup()
    copy.sendall(kind(copy).encode() + repr("socket" in sys.modules).encode() + b";")
    copy.close()
    fd = sock.detach()
    import os
    os.write(fd, repr([sock.fileno(), repr(sock)]).encode())
    os.close(fd)
"""


def exec_child() -> anyfork.Process:
    # python= forces a real exec even if a test has started an early template (a copy of this
    # pytest process, which has imported socket).
    return anyfork.new_exec(python=sys.executable).eval(CHILD_CODE)


def answer(proc: anyfork.Process, func: str) -> list[object]:
    with proc.run_blocking(func, timeout=10) as sock:
        facts: list[object] = ast.literal_eval(recv_all(sock).decode())
    return facts


def test_exec_child_gets_the_lookalike_without_importing_socket() -> None:
    a, b = socket.socketpair()
    try:
        facts = answer(exec_child().send_fh(a), "describe")
    finally:
        a.close()
        b.close()
    assert facts == ["anyfork._child._sock.Socket", False, "anyfork._child._sock.Socket"]


def test_forked_child_gets_a_real_socket() -> None:
    """Templates preload socket: a forked child never sees the look-alike."""
    with anyfork.new_exec(python=sys.executable) as template:
        facts = answer(template.eval(CHILD_CODE).fork(), "describe")
    assert facts == ["socket.socket", True]


def test_function_whose_module_imports_socket_gets_a_real_socket() -> None:
    """The function is found before its socket is made: a module that imports socket at the
    top gets the real type."""
    proc = exec_child().eval("import socket")
    assert answer(proc, "describe") == ["socket.socket", True]


def test_lookalike_borrows_the_methods_socket_py_adds() -> None:
    with exec_child().run_blocking("through_makefile", timeout=10) as sock:
        sock.sendall(b"ping\n")
        assert recv_exactly(sock, 9) == b"got ping\n"
        family, kind, text, inheritable = ast.literal_eval(recv_all(sock).decode())
    assert family == repr(socket.AF_UNIX)
    assert kind == repr(socket.SOCK_STREAM)
    assert text.startswith("<anyfork._child._sock.Socket fd=")
    assert inheritable is False


def test_lookalike_close_waits_for_its_files() -> None:
    with exec_child().run_blocking("close_while_file_open", timeout=10) as sock:
        assert recv_all(sock) == b"still open"


def test_passed_listening_socket_accepts(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen()
        proc = exec_child().send_fh(listener)
    with proc.run_blocking("accept_one", timeout=10) as sock:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(10)
            client.connect(path)
            # accept() builds socket.socket for the new connection, as the stdlib's does.
            assert recv_all(client) == b"socket.socket"
        assert ast.literal_eval(recv_all(sock).decode()) == ["anyfork._child._sock.Socket", -1]


def test_lookalike_dup_and_detach() -> None:
    with exec_child().run_blocking("dup_and_detach", timeout=10) as sock:
        first, _, rest = recv_all(sock).partition(b";")
    assert first == b"anyfork._child._sock.SocketFalse"  # dup() needed no import of socket
    fileno, text = ast.literal_eval(rest.decode())
    assert fileno == -1
    assert "[closed]" in text


def test_lookalike_is_not_picklable_and_reports_missing_names() -> None:
    """Checked in this process: the class needs nothing of the child."""
    a, b = socket.socketpair()
    with _sock.Socket(fileno=a.detach()) as sock, b:
        with pytest.raises(TypeError, match="cannot pickle"):
            pickle.dumps(sock)
        with pytest.raises(AttributeError, match="no attribute 'no_such_method'"):
            sock.no_such_method  # noqa: B018
        assert getattr(sock, "_io_refs") == 0  # noqa: B009  # mypy: not in typeshed
        assert sock.fileno() >= 0
    assert sock.fileno() == -1  # closed by the with block


def test_lookalike_half_made_still_has_a_repr() -> None:
    """A Socket whose __init__ never set its slots (the finaliser's ResourceWarning calls repr)
    has a repr, as socket.socket has, instead of raising from a borrowed slot descriptor."""
    half = _sock.Socket.__new__(_sock.Socket)
    assert repr(half).startswith("<anyfork._child._sock.Socket fd=-1,")
    with pytest.raises(AttributeError):
        half._closed  # noqa: B018


def _boot_of(proc: anyfork.Process) -> str:
    pid = proc.wait_started_blocking(timeout=10)
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().split(b"\0")[3].decode()


def test_own_interpreter_receives_the_child_code() -> None:
    with anyfork.new_exec(python=sys.executable) as proc:
        assert _boot_of(proc) == _spawn.SHIPPED_BOOT
        facts = answer(proc.eval(CHILD_CODE), "describe")
    assert facts[0] == "anyfork._child._sock.Socket"


def test_other_interpreter_imports_anyfork_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """Marshalled code only travels to the same binary; any other finds anyfork on sys.path
    (and checks the protocol version)."""
    monkeypatch.setattr(_spawn, "_same_interpreter", lambda exe: False)
    with anyfork.new_exec(python=sys.executable) as proc:
        assert _boot_of(proc) == _spawn.BOOT
        facts = answer(proc.eval(CHILD_CODE), "describe")
    assert facts[0] == "anyfork._child._sock.Socket"


def test_shipped_modules_look_imported() -> None:
    """Spec, file, package path and parent attribute as the import system sets them, so that
    tracebacks, ``import anyfork.worker`` and ``importlib`` work in the child."""
    code = r"""
import sys
def modules(sock):
    import anyfork, anyfork.worker, anyfork._child._serve
    serve = anyfork._child._serve
    facts = [serve.__spec__.name, serve.__file__, anyfork.__path__,
             serve is sys.modules["anyfork._child._serve"], anyfork.worker._serve is serve]
    sock.sendall(repr(facts).encode())
"""
    proc = anyfork.new_exec(python=sys.executable).eval(code)
    name, path, package_path, registered, same = answer(proc, "modules")
    assert name == "anyfork._child._serve"
    assert path == _serve.__file__
    assert package_path == list(anyfork.__path__)
    assert registered
    assert same


def test_child_exits_if_the_code_stops_short(monkeypatch: pytest.MonkeyPatch) -> None:
    """A creator gone in the middle of sending the code (here: only part of it is queued)
    leaves a child that exits with status 3, not one that waits forever."""
    real = _spawn.exec_server

    def truncated(python: str | None = None) -> tuple[socket.socket, int, bytes]:
        sock, pid, code = real(python)
        return sock, pid, code[:100]

    monkeypatch.setattr(_spawn, "exec_server", truncated)
    proc = anyfork.new_exec(python=sys.executable)
    proc.close()
    assert eventually(lambda: proc.returncode is not None, what="the child's exit") is True
    assert proc.returncode == 3
