"""Functions the tests run in child processes.  Stdlib only, cheap to import."""

from __future__ import annotations

import os
import sys


def echo_args(sock, *args):
    """Send back a repr of every argument: types and order."""
    out = []
    for a in args:
        if isinstance(a, (str, bytes)):
            out.append(repr(a))
        else:
            out.append(type(a).__name__)
    sock.sendall("\n".join(out).encode())


def report(sock, *args):
    """Send pid, parent pid and module facts."""
    import json

    sock.sendall(
        json.dumps(
            {
                "pid": os.getpid(),
                "ppid": os.getppid(),
                "asyncio": "asyncio" in sys.modules,
                "path": sys.path,
                "executable": sys.executable,
            }
        ).encode()
    )


def write_to_fds(sock, *args):
    """Write b'hello <index>' into every file-like argument, then report their types."""
    names = []
    for i, a in enumerate(args):
        names.append(type(a).__name__)
        if hasattr(a, "sendall"):
            a.sendall(b"hello %d" % i)
        elif hasattr(a, "write"):
            a.write(b"hello %d" % i)
    sock.sendall(",".join(names).encode())


def wait_for_eof(sock, *args):
    """Block until the parent closes its end."""
    while sock.recv(4096):
        pass


def exit_with(sock, code):
    raise SystemExit(int(code))


def facts(sock, *args):
    """Report what the issue promises about a forked child, as JSON."""
    import gc
    import json
    import signal

    with open("/proc/self/comm") as f:
        comm = f.read().strip()
    sock.sendall(
        json.dumps(
            {
                "pid": os.getpid(),
                "ppid": os.getppid(),
                "freeze_count": gc.get_freeze_count(),
                "sigint_default": signal.getsignal(signal.SIGINT) is signal.default_int_handler,
                "sigusr1_default": signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL,
                "sigchld_default": signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL,
                "comm": comm,
                "random": __import__("random").random() if "random" in sys.modules else None,
                "main_marker": getattr(sys.modules["__main__"], "marker", None),
                "args": [a if isinstance(a, str) else repr(a) for a in args],
            }
        ).encode()
    )


def adopt_and_run(sock, handed):
    """Continue preparing a process handed over with to_fh, run it, relay its output."""
    import anyfork

    proc = anyfork.new_from_fh(handed)
    proc.send_arg("added by adopter")
    inner = proc.run_blocking("childfuncs:echo_args", timeout=10)
    chunks = []
    while True:
        chunk = inner.recv(4096)
        if not chunk:
            break
        chunks.append(chunk)
    inner.close()
    sock.sendall(b"".join(chunks) + f"\npid={proc.pid}".encode())


def serve_pids(sock, listener):
    """A prefork server's worker: answer each connection with this process's pid, until killed
    (SIGTERM: the default action)."""
    sock.sendall(b"ready")
    while True:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(str(os.getpid()).encode())


def read_lines(sock, pipe):
    """Iterate a passed pipe line by line (the way that needs a buffered file) and report."""
    lines = [line.decode().rstrip("\n") for line in pipe]
    sock.sendall(repr((type(pipe).__name__, lines)).encode())


def describe_files(sock, *files):
    """Report each passed file's type, mode and (text files) encoding."""
    out = [
        (type(f).__name__, getattr(f, "mode", None), getattr(f, "encoding", None)) for f in files
    ]
    sock.sendall(repr(out).encode())


def write_unflushed(sock, *files):
    """Write to each passed file without flushing, and return (the process then exits)."""
    for i, f in enumerate(files):
        f.write(f"line {i}\n" if hasattr(f, "encoding") else b"line %d\n" % i)
    sock.sendall(b"written")
