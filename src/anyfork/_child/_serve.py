"""The command server: the loop that runs in every template and every fresh process until ``run``.

It is loaded into every exec'd interpreter and lives in every fork, so it imports only ``os``
and builtin modules; the rest (``socket``, ``fcntl``, ``select``, ``traceback``) on the path
that needs it, and a template imports what its children need before its first fork.

Its rules: docs/design.md, "The command server".
"""

from __future__ import annotations

import _socket
import atexit
import os
import sys

from . import _target, _wire
from ._forking import (
    POLLERR,
    POLLHUP,
    POLLIN,
    POLLOUT,
    RECV_FLAGS,
    SPARE_DELAY,
    Forker,
    exit_code,
    fds_from,
    handled_signals,
    ignore_interrupts,
    leave,
    name,
    open_comm,
    restore_signals,
)
from ._target import Fd, socket_type, user_socket, wrap
from ._target import resolve as resolve  # (also the RPC server's way to find its function)

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import signal as _signal  # the same functions; ``signal`` itself would import enum
    from typing import Any, NoReturn
else:
    import _signal

_ANCILLARY = _socket.CMSG_SPACE(_wire.MAX_FDS * 4)
#: Commands are read several frames at a time where fds arrive as ``_wire.Decoder.receive``
#: expects (Linux); else one frame at a time.  (Nothing follows RUN before RUNNING: no read
#: takes the function's bytes.)
_BULK = sys.platform.startswith("linux")
#: Reports never block, and never raise SIGPIPE (a forked main program may not ignore it).
_SEND_FLAGS = _socket.MSG_DONTWAIT | _socket.MSG_NOSIGNAL

#: The server of this process, while it serves (``anyfork.worker`` reads the argument list here).
current: Server | None = None


class Server(Forker):
    """Serves the commands of one creator on one socket, in a single-threaded process."""

    def __init__(self, fd: int, owner: int, args: list[object] | None = None):
        super().__init__()
        self.sock = _stream(fd)
        self.owner = owner
        self.args: list[object] = args if args is not None else []
        self.decoder = _wire.Decoder(_wire.COMMANDS)
        #: A select.poll over the socket (and the wakeup fd of a template), made on first need.
        self._poll: Any = None
        self._polled = 0  # the events the socket is registered for in _poll
        self._polled_wake = False  # the wakeup fd is registered in _poll
        #: Reports not yet written (the socket did not take them without blocking).
        self._out = bytearray()
        #: The creator has closed its end: reports go nowhere, commands still arrive until EOF.
        self.gone = False

    # -- reports ---------------------------------------------------------------------------

    def report(self, op: int, payload: bytes = b"") -> None:
        """Queue a report and write what the socket takes now, without blocking."""
        self._out += _wire.frame(op, payload)
        self.write_reports()

    def has_reports(self) -> bool:
        return bool(self._out)

    def write_reports(self) -> None:
        out = self._out
        while out:
            try:
                sent = self.sock.send(out, _SEND_FLAGS)
            except (BlockingIOError, InterruptedError):
                return  # the rest goes when the socket is writable (_wait)
            except OSError:
                # EPIPE, ECONNRESET: the creator has gone.  Nobody will read a report again;
                # the commands it sent before it went are still ours to carry out.
                self.gone = True
                out.clear()
                return
            del out[:sent]

    def _flush_reports(self) -> None:
        """Block until every report is written (or the creator is gone), reaping meanwhile."""
        while self._out:
            self._wait(read=False)

    def report_exits(self, frames: bytes) -> None:
        if not self.gone:
            self._out += frames
            self.write_reports()

    def leave_reports(self) -> None:
        self._poll = None
        self._polled = 0
        self._polled_wake = False
        self._out = bytearray()  # the template's reports, for the template's creator
        self.gone = False

    def fail(self, stage: str, exc: BaseException) -> NoReturn:
        """Report a failed command (ERROR) and end this process."""
        from . import _records  # only on the error path (with pickle and traceback)

        if isinstance(exc, _wire.WireError):
            # The parent's stream broke the protocol: an error of the connection, which the
            # parent raises as such (it rebuilds anyfork's own errors by name).
            record = _records.anyfork_error(
                "ProtocolError", f"the process received a broken command stream: {exc}"
            )
        else:
            record = _records.error_record(exc)
        payload = _wire.pack_values([stage, record])
        if len(payload) > _wire.MAX_REPORT:  # a giant message: keep what the parent accepts
            _, module, qualname, message, text = _records.unpack(record)
            cut = _wire.MAX_REPORT // 4
            record = _records.pack(b"", module, qualname, message[:cut], text[-cut:])
            payload = _wire.pack_values([stage, record])
        self.report(_wire.ERROR, payload)
        self._flush_reports()
        if self.gone:
            # Nobody reads the report (configure and forget): say it where the original does,
            # on stderr, rather than fail in silence.
            _, _, _, message, text = _records.unpack(record)
            sys.stderr.write(f"anyfork[{os.getpid()}] {stage} failed: {text or message}\n")
        leave(1)

    # -- the loop --------------------------------------------------------------------------

    def start(self) -> NoReturn:
        """Report our pid, then serve."""
        self.pid = os.getpid()
        self.report(_wire.STARTED, _wire.U32.pack(self.pid))
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
                # EOF: the creator has let go.  A template still reports its children's exits
                # while the creator reads (``linger``); then it goes.
                self.linger()
                self._flush_reports()
                leave(0)
            op, payload, fds = frame
            try:
                self._dispatch(op, payload, fds)
            except (Exception, SystemExit) as exc:  # SystemExit: an eval that called exit()
                self.fail(_STAGES.get(op, "command"), exc)

    def _read_frame(self) -> tuple[int, bytes, list[int]] | None:
        dec = self.decoder
        while True:
            frame = dec.next_frame()
            if frame is not None:
                return frame
            if dec.eof:
                return None
            if self.forked or self._out or self.ahead:
                self._wait(read=True)
            try:
                want = dec.bulk_want() if _BULK else dec.want()
                data, anc, flags, _ = self.sock.recvmsg(want, _ANCILLARY, RECV_FLAGS)
            except (ConnectionResetError, BrokenPipeError):
                return None
            fds = fds_from(anc)
            if flags & getattr(_socket, "MSG_CTRUNC", 0):
                for fd in fds:
                    os.close(fd)
                raise _wire.WireError("too many file descriptors in one frame")
            dec.receive(data, fds)

    def _wait(self, read: bool) -> None:
        """Block until a command can be read (``read``) or every report is written, writing
        reports and (a template) reaping meanwhile."""
        poll = self._poll
        if poll is None:
            import select

            poll = self._poll = select.poll()
        if self.wake_r >= 0 and not self._polled_wake:
            poll.register(self.wake_r, POLLIN)
            self._polled_wake = True
        fd = self.sock.fileno()
        while True:
            events = (POLLIN if read else 0) | (POLLOUT if self._out else 0)
            if not events:
                return  # nothing left to write, and not asked to read
            if events != self._polled:
                poll.register(fd, events)  # (registering again modifies)
                self._polled = events
            readable = False
            idle = read and (self.spare_due or self.ahead)
            polled = poll.poll(SPARE_DELAY if idle else None)
            if not polled:
                self.idle()  # no command for SPARE_DELAY: a good time to fork
                continue
            for ready, what in polled:
                if ready == self.wake_r:
                    self.reap()
                    continue
                if what & (POLLOUT | POLLERR | POLLHUP) and self._out:
                    self.write_reports()
                if what & (POLLIN | POLLERR | POLLHUP):
                    readable = True  # data, or EOF: recvmsg says which
            if read and readable:
                return

    # -- commands --------------------------------------------------------------------------

    def _dispatch(self, op: int, payload: bytes, fds: list[int]) -> None:
        if op != _wire.FDS and op != _wire.FORK and op != _wire.AHEAD and fds:
            for fd in fds:
                os.close(fd)
            raise _wire.WireError(f"unexpected file descriptors on opcode {op:#x}")
        if self.ahead and op != _wire.AHEAD:
            self.fork_ahead()  # what was asked before this command, with the state before it
        if not self.named and op != _wire.RUN:
            self.named = True
            self.rename("child")  # no longer a spare, to ps and to the tests' leak checks
        if op != _wire.FORK and op != _wire.PID and op != _wire.AHEAD:
            self.drop_spare()  # the state it was forked with is about to change
        if op == _wire.IMPORT or op == _wire.EVAL:
            self.handled = None
        if op == _wire.IMPORT:
            for module in _wire.unpack_strings(payload):
                __import__(module)
        elif op == _wire.EVAL:
            self._eval(payload)
        elif op == _wire.ARGS:
            self.args.extend(_wire.unpack_values(payload))
        elif op == _wire.FDS:
            try:
                specs = _wire.unpack_fd_specs(payload, len(fds))
            except _wire.WireError:
                for fd in fds:
                    os.close(fd)
                raise
            self.args.extend(map(Fd, fds, specs))
        elif op == _wire.FORK:
            if not fds and payload:
                # Hook for anyfork.remote: the child's connection is fetched from the agent.
                from ._fetch import fetch_or_report

                fds = fetch_or_report(self, payload)
                if not fds:
                    return
            if len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                raise _wire.WireError("a FORK frame carries exactly one socket")
            self.fork(fds[0])
        elif op == _wire.AHEAD:
            if not fds:
                raise _wire.WireError("an AHEAD frame carries at least one socket")
            self.ahead.extend(fds)  # forked when idle (_forking), or before what follows
            self.spares_wanted = len(fds)
            if payload:
                self.fork_ahead()  # (asked for at once)
        elif op == _wire.RUN:
            (ref,) = _wire.unpack_strings(payload)
            self._run(ref)
        elif op == _wire.PID:
            self.report(_wire.STARTED, _wire.U32.pack(self.pid))  # (new_from_fh asks)
        elif op == _wire.MAIN:
            from . import _main  # only in the processes of a program that runs its functions

            _main.learn(*_wire.unpack_main(payload))

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

    def serve_creator(self, fd: int) -> NoReturn:
        self.sock = _stream(fd)
        self.owner = os.getppid()
        self.decoder = _wire.Decoder(_wire.COMMANDS)
        # Named at run, not here: naming costs a forked child ~6% of its way to run.
        self.pid = os.getpid()
        self.report(_wire.STARTED, _wire.U32.pack(self.pid))
        self._warm_up()
        self.serve()  # dropped by its creator before it even started: exits quietly

    def _warm_up(self) -> None:
        """Go once through what ``run`` will do, without doing it, while nobody waits: the
        pages it copies from the template are then not copied between ``run`` and the first
        byte (measured: half that path's page copies, a fifth of its time; docs/design.md)."""
        decoder = _wire.Decoder(_wire.COMMANDS)
        decoder.receive(_wire.frame(_wire.RUN, _wire.pack_values(["socket:socket"])))
        frame = decoder.next_frame()
        if frame is not None:
            resolve(_wire.unpack_strings(frame[1])[0])
        none: list[object] = []
        [wrap(a) if type(a) is Fd else a for a in none]  # (the comprehension's code)
        _wire.frame(_wire.RUNNING, _wire.U32.pack(0))
        socket_type()(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, self.sock.fileno()).detach()
        # What ``_run`` looks up and calls: a lookup the interpreter's type cache misses writes
        # a slot and the name's reference count, a call the reference counts of the function
        # and its code: pages shared with the template until then (measured: page copies from
        # RUN to the function 22 -> 10; perf's fault addresses mapped to libpython's symbols).
        calls = (self._flush_reports, self.rename, restore_signals, user_socket, name)
        touched: list[object] = [func.__code__ for func in calls]
        touched += (self.args, self.handled, self.gone, self.comm_fd, os.sched_yield)
        touched += ("module:name".rpartition(":"), self.sock.detach)
        del touched
        try:
            self.comm_fd = open_comm(out_of_the_way=True)
        except OSError:
            pass  # (named the slow way, or not at all)

    def _run(self, ref: str) -> NoReturn:
        func = resolve(ref)
        args = [wrap(a) if type(a) is Fd else a for a in self.args]
        self.args = []
        restore_signals(self.handled if self.handled is not None else handled_signals())
        # RUNNING is our last word, after every report still queued (a template's EXITED...).
        self.report(_wire.RUNNING, _wire.U32.pack(self.pid))
        self._flush_reports()
        if self.gone:
            leave(0)  # the creator has let go (run was cancelled): nobody wants the function
        # The creator, woken by RUNNING, often shares our CPU (the kernel puts a process woken
        # by a socket write beside its waker): let it take the socket now, not once the function
        # blocks or ends (measured: start to first byte of a spaced start -0.5 ms of ~1.9).
        os.sched_yield()
        self.rename(ref.rpartition(":")[2] or ref)  # (while the creator reads RUNNING)
        sock = user_socket(self.sock)
        global current
        current = None
        code = 0
        try:
            func(sock, *args)
        except SystemExit as exc:
            code = exit_code(exc)
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        # Its last bytes (or EOF, if it closed the socket) woke the creator, likely on our CPU:
        # let it take them before we leave (the way out is slow, its first run cold).
        os.sched_yield()
        leave(code)


_STAGES = {
    _wire.IMPORT: "require",
    _wire.EVAL: "eval",
    _wire.ARGS: "send_arg",
    _wire.FDS: "send_fh",
    _wire.FORK: "fork",
    _wire.AHEAD: "fork",
    _wire.RUN: "run",
    _wire.MAIN: "main",
}


def _stream(fd: int) -> _socket.socket:
    # Family and type are known (our socketpair): naming them spares three syscalls of
    # detection.  The socket is blocking already: blocking-ness is per open file, and the
    # creator made it blocking.
    return _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, fd)


def _refuse_version(fd: int, version: str) -> NoReturn:
    """Tell a parent that speaks another protocol version so (``_wire.version_error``); exit."""
    from . import _records

    message = (
        f"the parent speaks anyfork command protocol version {version}, this child (Python "
        f"{sys.version.split()[0]} at {sys.executable}, anyfork from {__file__}) speaks "
        f"version {_wire.VERSION}: parent and child import different anyfork versions"
    )
    data = _wire.version_error(_records.anyfork_error("ProtocolError", message))
    try:
        while data:
            data = data[os.write(fd, data) :]
    except OSError:
        pass  # the parent has gone
    os._exit(2)


def serve_forked(fd: int, owner: int) -> NoReturn:
    """Serve in a process forked from the main program (early and main templates)."""
    _target.forked_main = True
    atexit._clear()  # the main program's handlers are not ours to run
    ignore_interrupts()
    _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
    name("anyfork tmpl")
    Server(fd, owner).start()


def main() -> NoReturn:
    """Entry point of an exec'd interpreter (``_spawn.BOOT`` and ``_spawn.SHIPPED_BOOT``)."""
    version, fd, owner = sys.argv[1:4]
    del sys.argv[1:]
    # ``__main__`` is the boot code's: what it bound there must not pass for the program's (a
    # function ``main`` run by name), nor keep the shipped code (``data``) alive.
    namespace = sys.modules["__main__"].__dict__
    for key in [key for key in namespace if not key.startswith("__")]:
        del namespace[key]
    # Fds our creator leaked are not ours to close: it closed them in the spawn (those above
    # our socket may be our interpreter's own, e.g. PYTHONPERFSUPPORT's perf map).
    # Inherited through exec, so inheritable: as every fd Python opens (PEP 446), it must not
    # leak into what the function execs (the creator would not see EOF while that lives).
    os.set_inheritable(int(fd), False)
    if version != str(_wire.VERSION):
        _refuse_version(int(fd), version)
    ignore_interrupts()
    Server(int(fd), int(owner)).start()
