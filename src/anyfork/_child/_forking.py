"""Forking, for the command server: a template's children and its spare, reaping them, and the
clean state a new process starts from (signals, name, the template's fds left behind).

``Forker`` is the forking half of ``_serve.Server``; it imports as ``_serve`` does.  Forking is
slow and slows down whatever runs beside it, so a template forks once it has had no command for
``SPARE_DELAY``: its spare (the next child, forked in advance, which waits for the socket of the
next FORK) and the children asked for ahead (AHEAD; also before the next command, to keep the
order, or at once if asked).  A command that changes the template discards the spare.
"""

from __future__ import annotations

import _socket
import _weakref
import atexit
import gc
import os
import sys

from . import _wire

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import signal as _signal  # the same functions; ``signal`` itself would import enum
    from typing import IO, NoReturn
else:
    import _signal

RECV_FLAGS = getattr(_socket, "MSG_CMSG_CLOEXEC", 0)
#: How long (ms) a template waits without a command before it forks its next spare.
SPARE_DELAY = 5
# select.POLLIN and friends, without importing select on the way to the first command.
POLLIN, POLLOUT, POLLERR, POLLHUP = 0x1, 0x4, 0x8, 0x10

#: Buffered file objects made from received fds (weak references): flushed before a fork and
#: when the process leaves, as Python flushes its own stdio, so nothing written is lost to
#: ``os._exit`` or written twice by a fork.
_files: list[_weakref.ref[IO[bytes] | IO[str]]] = []


class Forker:
    """Forks children (and spares) of this process, and reaps them at once."""

    sock: _socket.socket
    #: The creator has gone: nobody reads our reports any more.
    gone: bool

    if TYPE_CHECKING:  # the server's (reports for the creator; a new child serving it)

        def report(self, op: int, payload: bytes = b"") -> None: ...
        def report_exits(self, frames: bytes) -> None: ...
        def has_reports(self) -> bool: ...
        def write_reports(self) -> None: ...
        def serve_creator(self, fd: int) -> NoReturn: ...
        def leave_reports(self) -> None: ...

    def __init__(self) -> None:
        #: This process has forked: it reaps (SIGCHLD through the wakeup fd ``wake_r``).
        self.forked = False
        self.wake_r = self.wake_w = -1
        #: A spare that has become a child still bears the spare's name until it is named
        #: (at its first command other than ``run``, or at ``run``).
        self.named = True
        #: Signals with Python handlers, computed in the template before it forks (so that no
        #: child has to look) and forgotten when a command may have installed new handlers.
        self.handled: list[int] | None = None
        #: Spares forked when idle (oldest first): their socket to us, and their pid.
        self._spares: list[tuple[_socket.socket, int]] = []
        #: As many as the last AHEAD asked for children (one after a FORK): each child asked
        #: for is then an old spare, not a fresh fork (measured: a fresh fork's way from RUN to
        #: its function is ~0.07 ms longer; its pages are shared with its siblings', so its
        #: writes copy them, where a spare's, left alone by the template since, are its own).
        self.spares_wanted = 1
        #: A spare is to be forked, once no command has come for ``SPARE_DELAY``.
        self.spare_due = False
        #: Sockets of the children asked for ahead of need (AHEAD), not forked yet.
        self.ahead: list[int] = []
        #: ``/proc/self/comm``, opened by a new child while it waits (see ``rename``).
        self.comm_fd = -1

    def rename(self, title: str) -> None:
        """``name(title)``, through the file a new child opened while it waited: opening it
        is most of what naming costs, and naming is on the way to ``run``'s function."""
        fd, self.comm_fd = self.comm_fd, -1
        name(title, fd)

    def fork(self, fd: int) -> None:
        """Fork a child that serves the socket ``fd``, and report its pid (FORKED), or the
        failure (FORK_FAILED: this process goes on serving), in the order of the FORK frames."""
        if not self.forked:
            preload()
            gc.collect()  # once: the heap the children will share starts without garbage
            self._arm_reaper()
            self.forked = True
        # Freeze: the children's collector never walks (and so never dirties) the pages they
        # share with us.  (What is frozen is also never collected here; a template that keeps
        # creating cyclic garbage between forks should call gc.collect() in its own eval.)
        gc.freeze()
        if self.handled is None:
            self.handled = handled_signals()
        self.spare_due = True
        pid = self._hand_to_spare(fd)
        if pid:
            self.report(_wire.FORKED, _wire.U32.pack(pid))
            return
        flush_files()  # or each child would write what our buffers hold once more
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(fd)
            self.report(_wire.FORK_FAILED, _wire.pack_values([f"fork failed: {exc}"]))
            return
        if pid == 0:
            # The child: drop everything that belongs to the template, serve our own creator.
            self.leave_template()
            self.serve_creator(fd)
        os.close(fd)
        self.report(_wire.FORKED, _wire.U32.pack(pid))

    def _hand_to_spare(self, fd: int) -> int:
        """Give ``fd`` to the oldest live spare; its pid, or 0 without one."""
        while self._spares:
            spare, pid = self._spares.pop(0)
            try:
                spare.sendmsg(
                    [b"\0"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, _wire.pack_ints([fd]))]
                )
            except OSError:
                continue  # that spare died (killed from outside)
            finally:
                spare.close()
            os.close(fd)
            return pid
        return 0

    def fork_ahead(self) -> None:
        """Fork the children asked for ahead of need, in order (not those the creator has let
        go of meanwhile: a command that changed the template discards them)."""
        while self.ahead:
            fd = self.ahead.pop(0)
            if _hung_up(fd):
                os.close(fd)
                self.report(_wire.FORK_FAILED, _wire.pack_values(["not needed any more"]))
            else:
                self.fork(fd)

    def idle(self) -> None:
        """Nothing has happened for ``SPARE_DELAY``: fork what was asked ahead, or a spare."""
        if self.ahead:
            self.fork_ahead()
        elif self.spare_due:
            self.fork_spare()

    def fork_spare(self) -> None:
        """Fork the spare now (the template has been idle for ``SPARE_DELAY``)."""
        self.spare_due = False
        while len(self._spares) < self.spares_wanted:
            if not self._fork_one_spare():
                return

    def _fork_one_spare(self) -> bool:
        flush_files()
        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            return False  # no spare this time; the next FORK forks directly and reports failure
        if pid:
            theirs.close()
            self._spares.append((ours, pid))
            return True
        ours.close()
        self.leave_template()
        name("spare")
        try:
            _, anc, _, _ = theirs.recvmsg(1, _socket.CMSG_SPACE(4), RECV_FLAGS)
        except OSError:
            anc = []
        theirs.close()
        fds = fds_from(anc)
        if not fds:
            leave(0)  # discarded: the template's state changed, or it is gone
        self.named = False
        self.serve_creator(fds[0])

    def drop_spare(self) -> None:
        spares, self._spares = self._spares, []
        for spare, _ in spares:
            spare.close()  # it sees EOF and exits; we reap it

    def leave_template(self) -> None:
        """In a new child: let go of what belongs to the template."""
        self.drop_spare()
        self.spares_wanted = 1
        _signal.set_wakeup_fd(-1)
        _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
        for fd in (self.wake_r, self.wake_w, self.comm_fd):
            if fd >= 0:
                os.close(fd)
        self.comm_fd = -1
        self.sock.close()
        for fd in self.ahead:
            os.close(fd)
        self.ahead = []
        self.forked = False
        self.spare_due = False
        self.wake_r = self.wake_w = -1
        self.leave_reports()

    def linger(self) -> None:
        """At EOF: while the creator still reads (it has only shut its writing side: it closed
        this template but waits for its children), go on reaping the children and reporting
        their exits, until none is left.  A creator that has gone altogether (a hangup on the
        socket, or a report it refuses) wants nothing more: leave them at once."""
        if not self.forked:
            return
        self.drop_spare()
        self.spare_due = False
        for fd in self.ahead:  # (nobody will use them now)
            os.close(fd)
        self.ahead = []
        import select  # (loaded already: the serve loop polls with it)

        poll = select.poll()
        poll.register(self.wake_r, POLLIN)
        fd = self.sock.fileno()
        while not self.gone:
            self.reap()
            if self.gone or not self.children_left():
                return
            poll.register(fd, POLLOUT if self.has_reports() else 0)
            for ready, what in poll.poll():
                if ready == fd:
                    if what & (POLLHUP | POLLERR):
                        return
                    self.write_reports()

    def children_left(self) -> bool:
        """Any child not reaped yet (WNOWAIT: ``reap``, woken by its SIGCHLD, reports it)."""
        try:
            os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return False
        return True

    def _arm_reaper(self) -> None:
        """Reap forked children at once: SIGCHLD wakes the serve loop through a wakeup fd."""
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.wake_r, self.wake_w = r, w
        _signal.set_wakeup_fd(w)
        _signal.signal(_signal.SIGCHLD, _on_sigchld)

    def reap(self) -> None:
        """Reap every child that has exited, and report them all, in as few writes as can be."""
        try:
            os.read(self.wake_r, 512)
        except BlockingIOError:
            pass
        exits = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            exits.append(_wire.frame(_wire.EXITED, _wire.EXIT.pack(pid, status)))
        if exits:
            self.report_exits(b"".join(exits))


def _hung_up(fd: int) -> bool:
    """The other end of the socket ``fd`` is closed."""
    import select  # (loaded already: the serve loop polls with it)

    poll = select.poll()
    poll.register(fd, 0)
    return any(what & POLLHUP for _, what in poll.poll(0))


def _on_sigchld(signum: int, frame: object) -> None:
    """Nothing to do: the wakeup fd has woken the serve loop."""


def fds_from(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds.extend(_wire.unpack_ints(data[:usable]))
    return fds


def preload() -> None:
    """Import, once in the template, every module a forked child needs on its way to ``run``."""
    import fcntl  # noqa: F401  # wrap() uses it for every passed fd
    import socket  # noqa: F401  # the function receives a socket.socket
    # Not traceback: it costs milliseconds and a bigger template, for the error path only.

    # Run the compiler once: its first use sets up state that every child's eval would
    # otherwise set up again in its own copy (an exec'd template that received its code,
    # _spawn, may never have compiled anything: measured 850 -> 500 processes/s for eval+run).
    compile("def f(a, *b, c=1, **d):\n    return [a.b for a in b if c] or {d: 0}\n", "", "exec")


def handled_signals() -> list[int]:
    """The signals with a Python handler that ``run`` must reset (SIGINT, SIGCHLD and SIGPIPE
    apart: ``restore_signals`` sets the first two itself, and SIGPIPE stays as Python set it)."""
    handled = []
    for signum in range(1, _signal.NSIG):
        if signum in (_signal.SIGINT, _signal.SIGCHLD, _signal.SIGPIPE):
            continue
        try:
            handler = _signal.getsignal(signum)
        except (OSError, ValueError):
            continue
        if callable(handler):
            handled.append(signum)
    return handled


def closing_leaked(keep: int) -> list[tuple[int, ...]]:
    """For the creator of an exec'd interpreter (``_core._spawn``, the remote agent): spawn
    file actions that close what the child would inherit above its socket on fd ``keep``.

    Only stdio and the socket: whatever else is open without close-on-exec (a library's, or our
    creator's) would otherwise live on in the child and in every child it forks, keeping
    connections and pipes open (AnyEvent::Fork's "leaked fds through exec").  Closed by the
    creator, not by the child: its interpreter opens files of its own during its start-up,
    before any of our code runs (``PYTHONPERFSUPPORT``'s perf map, ``-X perf_jit``'s jitdump,
    the latter even inheritable), and the child cannot tell those from the leaked ones."""
    if hasattr(os, "POSIX_SPAWN_CLOSEFROM"):  # Python 3.13+ on glibc 2.34+
        return [(os.POSIX_SPAWN_CLOSEFROM, keep + 1)]
    actions: list[tuple[int, ...]] = []
    # Close-on-exec fds go by themselves.  (A thread that makes an fd inheritable between this
    # scan and the spawn leaks it: the price of an interpreter without CLOSEFROM.)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > keep and _inheritable(fd):
            actions.append((os.POSIX_SPAWN_CLOSE, fd))
    return actions


def _inheritable(fd: int) -> bool:
    try:
        return os.get_inheritable(fd)
    except OSError:  # the listing's own fd, or one another thread closed meanwhile
        return False


def restore_signals(handled: list[int]) -> None:
    """Give the function a process with default signal handling, as a fresh interpreter has."""
    if _signal.getsignal(_signal.SIGCHLD) != _signal.SIG_DFL:
        _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)  # (a forked child's is: no syscall)
    _signal.signal(_signal.SIGINT, _signal.default_int_handler)
    for signum in handled:
        _signal.signal(signum, _signal.SIG_DFL)


def ignore_interrupts() -> None:
    # A template lives as long as its creator's socket; a terminal's Ctrl-C belongs to the
    # creator, which will close the socket if it wants us gone.
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)


def name(title: str, fd: int = -1) -> None:
    """Name the process where ``ps`` and ``top`` show it (Linux's 15-byte comm), through ``fd``
    (``/proc/self/comm`` opened for writing, closed here) if given."""
    title = f"af:{title}"[:15]
    setproctitle = sys.modules.get("setproctitle")
    if setproctitle is not None:
        setproctitle.setproctitle(f"anyfork {title}")
    try:
        if fd < 0:
            fd = open_comm()
    except OSError:
        return
    try:
        os.write(fd, title.encode(errors="replace"))
    except OSError:
        pass
    finally:
        os.close(fd)


def open_comm(out_of_the_way: bool = False) -> int:
    """``/proc/self/comm``, opened for writing; ``out_of_the_way``: at fd 64 or above, so that
    the fds the process receives next get the numbers they would have had without it."""
    fd = os.open("/proc/self/comm", os.O_WRONLY | os.O_CLOEXEC)
    if not out_of_the_way:
        return fd
    import fcntl  # (preloaded by a template that forks)

    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 64)
    finally:
        os.close(fd)


def exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    sys.stderr.write(f"{code}\n")
    return 1


def track(file: IO[bytes] | IO[str]) -> None:
    """Flush ``file`` (a buffered file made from a received fd) before forks and at exit."""
    _files[:] = [ref for ref in _files if ref() is not None]
    _files.append(_weakref.ref(file))


def flush_files() -> None:
    for ref in _files:
        file = ref()
        try:
            if file is not None and not file.closed:
                file.flush()
        except Exception:
            pass  # (a pipe nobody reads any more: what it held is lost, as at any exit)


def leave(code: int) -> NoReturn:
    """Leave without running the creator's atexit handlers or finalising a copy-on-write heap:
    flush what the function wrote, run the handlers registered in this process, go."""
    try:
        atexit._run_exitfuncs()
    finally:
        flush_files()
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None:
                    stream.flush()
            except Exception:
                pass
        # Tearing a forked process's memory down takes a while, and the creator (woken by our
        # last bytes, or EOF) often shares our CPU: let it run first.
        os.sched_yield()
        os._exit(code)
