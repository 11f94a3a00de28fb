"""The command server: the loop that runs in every template and every fresh process until ``run``.

It is loaded into every exec'd interpreter and lives in the memory of every fork, so it imports
only ``os`` and builtin modules, plus ``_socket`` and ``_struct``.  Everything else (``socket``,
``fcntl``, ``select``, ``traceback``) is imported on the path that needs it; a template imports
the ones its children will need before its first fork, so that forked children never pay for an
import.  An exec'd child whose function does not use ``socket`` never imports it (``_sock``).

Life of a process::

    exec'd:  python -S -c BOOT <version> <fd> <owner pid> [<code size>] <sys.path...>
             ->  main()  ->  serve()      (the code of this module arrives on fd 3: _spawn)
    forked:  the template's serve() forks; the child closes the template's socket and serves the
             socket that rode on the FORK frame.

Rules:

* Read exactly one frame at a time (``_wire.Decoder.want``) so that a frame's fds are never
  swallowed by an earlier read.
* Before ``run``, the child writes only its own reports (STARTED, ERROR, FORK_FAILED, EXITED,
  RUNNING); after RUNNING it writes nothing: the socket belongs to the function.
* Any failed command is reported (ERROR) and ends the process: a half-prepared process is worse
  than none.  A failed fork is reported (FORK_FAILED) and the template keeps serving.
* EOF on the socket ends the process: nothing outlives a creator that went away.
* A template keeps one spare: its next child, forked in advance (see ``_fork_spare``).
* A process that has forked reaps its children at once (SIGCHLD through a wakeup fd) and reports
  their exit status to its creator (EXITED), so there are never zombies and the creator can say
  how a grandchild died.
"""

from __future__ import annotations

import _socket
import atexit
import gc
import os
import sys

from . import _sock, _wire

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import signal as _signal  # the same functions; ``signal`` itself would import enum
    import socket
    from collections.abc import Callable
    from typing import Any, NoReturn
else:
    import _signal

_ANCILLARY = _socket.CMSG_SPACE(_wire.MAX_FDS * 4)
_MAX_FD = os.sysconf("SC_OPEN_MAX")
_RECV_FLAGS = getattr(_socket, "MSG_CMSG_CLOEXEC", 0)

#: The server of this process, while it serves (``anyfork.worker`` reads the argument list here).
current: Server | None = None


class Fd(int):
    """A received file descriptor in the argument list (kept apart from plain values)."""

    __slots__ = ()


class Server:
    """Serves the commands of one creator on one socket, in a single-threaded process."""

    def __init__(self, fd: int, owner: int, args: list[object] | None = None):
        self.sock = _stream(fd)
        self.owner = owner
        self.args: list[object] = args if args is not None else []
        self.decoder = _wire.Decoder(_wire.COMMANDS)
        self.forked = False
        #: A spare that has become a child still bears the spare's name until it is named
        #: (at its first command other than ``run``, or at ``run``).
        self.named = True
        #: Signals with Python handlers, computed in the template before it forks (so that no
        #: child has to look) and forgotten when a command may have installed new handlers.
        self.handled: list[int] | None = None
        self._spare: _socket.socket | None = None
        self._wake_r = self._wake_w = -1
        self._poll: object = None

    # -- reports ---------------------------------------------------------------------------

    def report(self, op: int, payload: bytes = b"") -> None:
        self.sock.sendall(_wire.frame(op, payload))

    def fail(self, stage: str, exc: BaseException) -> NoReturn:
        """Report a failed command to the creator and end this process."""
        from . import _records  # only on the error path (with pickle and traceback)

        record = _records.error_record(exc)
        try:
            self.report(_wire.ERROR, _wire.pack_values([stage, record]))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the creator is gone: nobody is left to care
        except OSError:
            text = _records.unpack(record)[4]
            sys.stderr.write(f"anyfork[{os.getpid()}] {stage} failed:\n{text}")
        _exit(1)

    # -- the loop --------------------------------------------------------------------------

    def start(self) -> NoReturn:
        """Report our pid, then serve; a creator already gone means there is nothing to do."""
        try:
            self.report(_wire.STARTED, _wire.U32.pack(os.getpid()))
        except (BrokenPipeError, ConnectionResetError):
            _exit(0)
        self.serve()

    def serve(self) -> NoReturn:
        global current
        current = self
        while True:
            try:
                frame = self._read_frame()
            except _wire.WireError as exc:
                self.fail("protocol", exc)
            if frame is None:
                _exit(0)
            op, payload, fds = frame
            try:
                self._dispatch(op, payload, fds)
            except SystemExit as exc:
                self.fail(_STAGES.get(op, "command"), exc)
            except Exception as exc:
                self.fail(_STAGES.get(op, "command"), exc)

    def _read_frame(self) -> tuple[int, bytes, list[int]] | None:
        dec = self.decoder
        while True:
            frame = dec.next_frame()
            if frame is not None:
                return frame
            if dec.eof:
                return None
            if self.forked:
                self._wait_readable()
            try:
                data, anc, flags, _ = self.sock.recvmsg(dec.want(), _ANCILLARY, _RECV_FLAGS)
            except (ConnectionResetError, BrokenPipeError):
                return None
            fds = _fds_from(anc)
            if flags & getattr(_socket, "MSG_CTRUNC", 0):
                for fd in fds:
                    os.close(fd)
                raise _wire.WireError("too many file descriptors in one frame")
            dec.receive(data, fds)

    def _wait_readable(self) -> None:
        """Block until a command arrives, reaping and reporting children meanwhile."""
        poll = self._poll
        while True:
            events = poll.poll()  # type: ignore[attr-defined]  # a select.poll, set in _arm_reaper
            for fd, _ in events:
                if fd == self._wake_r:
                    try:
                        os.read(self._wake_r, 512)
                    except BlockingIOError:
                        pass
                    self._reap()
            if any(fd != self._wake_r for fd, _ in events):
                return

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            try:
                self.report(_wire.EXITED, _wire.EXIT.pack(pid, status))
            except OSError:
                pass  # the creator is gone; we are about to see EOF and exit

    def _arm_reaper(self) -> None:
        """Reap forked children at once: SIGCHLD wakes the poll through a wakeup fd."""
        import select

        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake_r, self._wake_w = r, w
        _signal.set_wakeup_fd(w)
        _signal.signal(_signal.SIGCHLD, _on_sigchld)
        poll = select.poll()
        poll.register(self.sock.fileno(), select.POLLIN)
        poll.register(r, select.POLLIN)
        self._poll = poll

    # -- commands --------------------------------------------------------------------------

    def _dispatch(self, op: int, payload: bytes, fds: list[int]) -> None:
        if op != _wire.FDS and op != _wire.FORK and fds:
            for fd in fds:
                os.close(fd)
            raise _wire.WireError(f"unexpected file descriptors on opcode {op:#x}")
        if not self.named and op != _wire.RUN:
            self.named = True
            _name("child")  # no longer a spare, to ps and to the tests' leak checks
        if op != _wire.FORK and op != _wire.PID:
            self._drop_spare()  # the state it was forked with is about to change
        if op == _wire.IMPORT or op == _wire.EVAL:
            self.handled = None
        if op == _wire.IMPORT:
            for name in _wire.unpack_strings(payload):
                __import__(name)
        elif op == _wire.EVAL:
            self._eval(payload)
        elif op == _wire.ARGS:
            self.args.extend(_wire.unpack_values(payload))
        elif op == _wire.FDS:
            count = _wire.unpack_u32(payload)
            if count != len(fds):
                for fd in fds:
                    os.close(fd)
                raise _wire.WireError(f"expected {count} file descriptors, received {len(fds)}")
            self.args.extend(Fd(fd) for fd in fds)
        elif op == _wire.FORK:
            if len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                raise _wire.WireError("a FORK frame carries exactly one socket")
            self._fork(fds[0])
        elif op == _wire.RUN:
            (ref,) = _wire.unpack_strings(payload)
            self._run(ref)
        elif op == _wire.PID:
            self.report(_wire.STARTED, _wire.U32.pack(os.getpid()))

    def _eval(self, payload: bytes) -> None:
        code, *args = _wire.unpack_values(payload)
        if not isinstance(code, str):
            raise TypeError("eval code must be str")
        main = sys.modules["__main__"].__dict__
        # ``args`` is bound only while the code runs, so a program's own global of that name
        # (an argparse namespace in a forked main program, say) survives.
        missing = object()
        saved = main.get("args", missing)
        bound = main["args"] = tuple(args)
        try:
            exec(compile(code, "<anyfork eval>", "exec"), main)
        finally:
            if main.get("args") is bound:  # unless the code assigned its own ``args``
                if saved is missing:
                    del main["args"]
                else:
                    main["args"] = saved

    def _fork(self, fd: int) -> None:
        if not self.forked:
            _preload()
            gc.collect()  # once: the heap the children will share starts without garbage
            self._arm_reaper()
            self.forked = True
        # Freeze: the children's collector never walks (and so never dirties) the pages they
        # share with us.  (What is frozen is also never collected here; a template that keeps
        # creating cyclic garbage between forks should call gc.collect() in its own eval.)
        gc.freeze()
        if self.handled is None:
            self.handled = _handled_signals()
        if self._hand_to_spare(fd):
            self._fork_spare()
            return
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(fd)
            self.report(_wire.FORK_FAILED, _wire.pack_values([f"fork failed: {exc}"]))
            return
        if pid == 0:
            # The child: drop everything that belongs to the template, serve our own creator.
            self._leave_template()
            self._serve_creator(fd)
        os.close(fd)
        self._fork_spare()

    # A spare is the next child, forked in advance: after each fork the template forks one more
    # process, which waits for the socket of the next FORK.  The fork (and CPython's own
    # after-fork work) then happens on another core while the previous child runs, instead of
    # between a FORK and its child's first byte.  Any command that changes the template's state
    # discards the spare, so a child always starts from exactly the state it would have had.

    def _hand_to_spare(self, fd: int) -> bool:
        spare, self._spare = self._spare, None
        if spare is None:
            return False
        try:
            spare.sendmsg(
                [b"\0"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, _wire.pack_ints([fd]))]
            )
        except OSError:
            return False  # the spare died (killed from outside): fork the child directly
        finally:
            spare.close()
        os.close(fd)
        return True

    def _fork_spare(self) -> None:
        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            return  # no spare this time; the next FORK forks directly and reports failure
        if pid:
            theirs.close()
            self._spare = ours
            return
        ours.close()
        self._leave_template()
        _name("spare")
        try:
            _, anc, _, _ = theirs.recvmsg(1, _socket.CMSG_SPACE(4), _RECV_FLAGS)
        except OSError:
            anc = []
        theirs.close()
        fds = _fds_from(anc)
        if not fds:
            _exit(0)  # discarded: the template's state changed, or it is gone
        self.named = False
        self._serve_creator(fds[0])

    def _drop_spare(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.close()  # it sees EOF and exits; we reap it

    def _leave_template(self) -> None:
        """In a new child: let go of what belongs to the template."""
        _signal.set_wakeup_fd(-1)
        _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self.sock.close()
        self.forked = False
        self._wake_r = self._wake_w = -1
        self._poll = None

    def _serve_creator(self, fd: int) -> NoReturn:
        self.sock = _stream(fd)
        self.owner = os.getppid()
        self.decoder = _wire.Decoder(_wire.COMMANDS)
        # Named at run, not here: naming costs a forked child ~6% of its way to run.
        self.start()  # dropped by its creator before it even started: exits quietly

    def _run(self, ref: str) -> NoReturn:
        func = resolve(ref)
        args = [wrap(a) if type(a) is Fd else a for a in self.args]
        self.args = []
        sock = _user_socket(self.sock)
        _restore_signals(self.handled if self.handled is not None else _handled_signals())
        _name(ref.rpartition(":")[2] or ref)
        sock.sendall(_wire.frame(_wire.RUNNING, _wire.U32.pack(os.getpid())))
        global current
        current = None
        code = 0
        try:
            func(sock, *args)
        except SystemExit as exc:
            code = _exit_code(exc)
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        _exit(code)


_STAGES = {
    _wire.IMPORT: "require",
    _wire.EVAL: "eval",
    _wire.ARGS: "send_arg",
    _wire.FDS: "send_fh",
    _wire.FORK: "fork",
    _wire.RUN: "run",
}


def _on_sigchld(signum: int, frame: object) -> None:
    """Nothing to do here: the wakeup fd has already woken the serve loop."""


def _fds_from(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds.extend(_wire.unpack_ints(data[:usable]))
    return fds


def resolve(ref: str) -> Callable[..., object]:
    """Find the function ``ref`` names: ``"module:qualname"``, or a bare name in ``__main__``."""
    module_name, sep, qualname = ref.partition(":")
    if not sep:
        module_name, qualname = "__main__", ref
    if not qualname:
        raise ValueError(f"function reference {ref!r} names no function")
    obj: object = _lib(module_name)
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            where = "the child's __main__" if module_name == "__main__" else repr(module_name)
            raise AttributeError(
                f"{where} has no attribute {qualname!r} (define it with eval(), or put it "
                f"in an importable module)"
            ) from None
    if not callable(obj):
        raise TypeError(f"{ref!r} is not callable")
    return obj


def _lib(name: str) -> Any:
    """A module, by dict lookup when it is loaded already.

    In a freshly forked child an ``import`` statement goes through the import machinery, whose
    writes copy pages a dict lookup leaves shared: measured at a fifth of a forked child's cost
    on its way to ``run`` (bench: 711 -> 895 processes/s)."""
    module = sys.modules.get(name)
    if module is None:
        __import__(name)
        module = sys.modules[name]
    return module


def _preload() -> None:
    """Import, once in the template, every module a forked child needs on its way to ``run``."""
    import fcntl  # noqa: F401  # wrap() uses it for every passed fd
    import socket  # noqa: F401  # the function receives a socket.socket
    # Not traceback: it costs milliseconds and a bigger template, for the error path only.

    # Run the compiler once: its first use sets up state that every child's eval would
    # otherwise set up again in its own copy (an exec'd template that received its code,
    # _spawn, may never have compiled anything: measured 850 -> 500 processes/s for eval+run).
    compile("def f(a, *b, c=1, **d):\n    return [a.b for a in b if c] or {d: 0}\n", "", "exec")


def _stream(fd: int) -> _socket.socket:
    # Family and type are known (our socketpair): naming them spares three syscalls of
    # detection.  The socket is blocking already: blocking-ness is per open file, and the
    # creator made it blocking.
    return _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, fd)


def _socket_type() -> type[socket.socket]:
    """``socket.socket`` if the module is loaded; else the look-alike that spares a fresh
    interpreter importing it (see ``_sock``)."""
    module = sys.modules.get("socket")
    if module is not None:
        return module.socket  # type: ignore[no-any-return]
    return _sock.Socket  # type: ignore[return-value]  # socket.socket's methods, not its type


def _user_socket(raw: _socket.socket) -> socket.socket:
    return _socket_type()(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, raw.detach())


def wrap(fd: int) -> object:
    """Turn a received fd into what a user expects: a socket, a file object, or (a directory)
    the plain fd."""
    stat = _lib("stat")
    mode = os.fstat(fd).st_mode
    if stat.S_ISSOCK(mode):
        return _socket_type()(fileno=int(fd))
    if stat.S_ISDIR(mode):
        return int(fd)
    fcntl = _lib("fcntl")
    access = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    file_mode = {os.O_RDONLY: "rb", os.O_WRONLY: "wb"}.get(access, "r+b")
    return open(int(fd), file_mode, buffering=0)  # ownership passes to the user


def _handled_signals() -> list[int]:
    """The signals with a Python handler that ``run`` must reset (SIGINT and SIGCHLD apart)."""
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


def _restore_signals(handled: list[int]) -> None:
    """Give the function a process with default signal handling, as a fresh interpreter has."""
    _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
    _signal.signal(_signal.SIGINT, _signal.default_int_handler)
    for signum in handled:
        _signal.signal(signum, _signal.SIG_DFL)


def _name(title: str) -> None:
    """Name the process where ``ps`` and ``top`` show it (Linux's 15-byte comm)."""
    title = f"af:{title}"[:15]
    setproctitle = sys.modules.get("setproctitle")
    if setproctitle is not None:
        setproctitle.setproctitle(f"anyfork {title}")
    try:
        fd = os.open("/proc/self/comm", os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.write(fd, title.encode(errors="replace"))
    except OSError:
        pass
    finally:
        os.close(fd)


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    sys.stderr.write(f"{code}\n")
    return 1


def _exit(code: int) -> NoReturn:
    """Leave without running the creator's atexit handlers or finalising a copy-on-write heap:
    flush what the function wrote, run the handlers registered in this process, go."""
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None:
                    stream.flush()
            except Exception:
                pass
        os._exit(code)


def _ignore_interrupts() -> None:
    # A template lives as long as its creator's socket; a terminal's Ctrl-C belongs to the
    # creator, which will close the socket if it wants us gone.
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)


def serve_forked(fd: int, owner: int) -> NoReturn:
    """Serve in a process forked from the main program (early and main templates)."""
    atexit._clear()  # the main program's handlers are not ours to run
    _ignore_interrupts()
    _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
    _name("anyfork tmpl")
    Server(fd, owner).start()


def main() -> NoReturn:
    """Entry point of an exec'd interpreter (see ``_spawn.boot_argv``)."""
    version, fd, owner = sys.argv[1:4]
    del sys.argv[1:]
    # Only stdio and our socket: whatever else our creator had open without close-on-exec (a
    # library's, or its creator's) would otherwise live on in us and in every child we fork,
    # keeping connections and pipes open (AnyEvent::Fork's "leaked fds through exec").
    os.closerange(int(fd) + 1, _MAX_FD)
    # Inherited through exec, so inheritable: as every fd Python opens (PEP 446), it must not
    # leak into what the function execs (the creator would not see EOF while that lives).
    os.set_inheritable(int(fd), False)
    if int(version) != _wire.VERSION:
        sys.stderr.write(
            f"anyfork: protocol version {version} from the parent, {_wire.VERSION} here: "
            f"the parent and child import different anyfork versions\n"
        )
        os._exit(2)
    _ignore_interrupts()
    Server(int(fd), int(owner)).start()
