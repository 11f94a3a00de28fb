"""The agent: the one anyfork process a ``Host`` keeps on its remote host.

Runs remotely, on the remote host's Python (3.8 or newer), shipped by the parent as the module
``_anyfork_agent`` next to the child side (``anyfork._child``) in a private directory
(``_boot``): stdlib only, nothing newer than 3.8.

The agent is the remote host's template: it forks the processes ``host.new()`` makes (with the
child side loaded, ``gc.freeze``, a spare: ``_forking.Forker``, as any template), and it execs
the fresh interpreters ``host.new_exec()`` makes (``posix_spawn``, the connection as fd 3, the
same ``_spawn.BOOT`` as a local exec).  It reaps all of them and reports their exits::

    stdin, stdout    the ssh session: the loader's transfer, then the READY line; afterwards
                     stdin is the parent's lifeline (EOF: the parent or the connection is gone)
                     and stdout stays open, unused
    DIR/agent.sock   listens; the ssh master forwards the parent's LOCAL/a to it.  The first
                     frame of each connection is a request:
        EXEC, NEW    a process serves the connection (its command stream, as on a local
                     socketpair): an exec'd interpreter, or a fork of the agent
        PARK, FETCH  a connection for a child that a template here forks (``_child._fetch``):
                     the parent's is parked under its token until the template's FETCH with
                     that token comes, which is answered with the parked connection
                     (SCM_RIGHTS); either is dropped when its other end closes first
        CONTROL      the parent's own connection (one): commands IMPORT (modules for the
                     children forked here) and KILL (pid, signal name); reports EXITED (every
                     process made here), FORK_FAILED, ERROR (the agent failed), and RUNNING,
                     its last word (every process is killed, DIR removed).  The connection's
                     EOF tells the parent at once that the agent has gone (which the ssh
                     session's own end cannot: ssh keeps its stdout open while channels live).

Nothing is left behind.  Every process the agent makes joins the process group of the
*keeper*, a child that does nothing but wait for EOF on a pipe whose only writer is the agent.
When stdin or the control connection reaches EOF (the parent closed the host, exited or was
killed, or the connection is gone) the agent kills that group, reaps, removes its directory,
says RUNNING and exits; when the agent itself is killed, the keeper sees EOF, removes the
directory and kills the group.  (A process that leaves the group on purpose, ``setsid``,
escapes both.)

The agent never blocks on the parent: reports go out from a buffer when the control connection
takes them, as in ``_serve``.  Its own stdin and stdout are moved to other fds at start, and fd
0 and 1 of every process it makes are ``/dev/null`` and stderr: a ``print`` can never corrupt a
protocol, and what processes write to stdout or stderr reaches the parent's stderr through ssh.
"""

from __future__ import annotations

import gc
import os
import select
import signal
import socket
import sys

from anyfork._child import _forking, _serve, _wire
from anyfork._child._fetch import FETCH, MAX_TOKEN, PARK

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import NoReturn

#: Requests: the first frame on a new connection.
EXEC = ord("x")  # a fresh interpreter serves this connection (host.new_exec)
NEW = ord("n")  # a process forked from the agent serves it (host.new)
CONTROL = ord("c")  # the parent's own connection: commands and reports
REQUESTS = frozenset((EXEC, NEW, CONTROL, PARK, FETCH))

#: Commands on the control connection.
KILL = ord("k")  # payload: values [pid (str), signal name]
COMMANDS = frozenset((_wire.IMPORT, KILL))

#: How long the agent, leaving, waits for its killed children to be reaped and for the parent
#: to take its last reports.
_LAST_WORDS_WAIT = 5.0

_POLLIN, _POLLOUT = select.POLLIN, select.POLLOUT


class Agent(_forking.Forker):
    """The agent's state and loop (see the module docstring)."""

    def __init__(self, base: str, boot: str):
        super().__init__()
        self.base = base
        self.boot = boot
        self.inp = os.dup(0)  # (dup: close-on-exec, so no child inherits the session)
        self.out = os.dup(1)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(2, 1)
        os.close(null)
        os.set_blocking(self.inp, False)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(os.path.join(base, "agent.sock"))
        self.listener.listen(128)
        self.listener.setblocking(False)
        self.sock = self.listener  # what a child forked here closes first (Forker)
        self.control: socket.socket | None = None
        self.decoder = _wire.Decoder(COMMANDS)
        self.requests: dict[int, tuple[socket.socket, _wire.Decoder]] = {}
        # PARK and FETCH connections waiting for their other half, by token (and by fd).
        self.parked: dict[str, socket.socket] = {}
        self.fetching: dict[str, socket.socket] = {}
        self.waiting: dict[int, str] = {}
        self.outbuf = bytearray()
        self.gone = False  # the parent cannot be written to any more
        self.leaving = False
        self.groups: list[int] = []
        self.keeper = self.keeper_w = -1
        self.start_keeper()
        # What a template does before its first fork, done now: the children forked here
        # share it all, and exec'd children are reaped from the start.
        _forking.preload()
        _forking.ignore_interrupts()
        _forking.name("agent")
        gc.collect()
        self._arm_reaper()
        self.forked = True

    def ready(self, line: bytes) -> None:
        """Say READY on the session's stdout; nothing more is written to it.  (It stays open:
        its EOF would end the session's output, stderr included, which is what the processes
        made here write to.)"""
        while line:
            line = line[os.write(self.out, line) :]

    # -- the keeper ------------------------------------------------------------------------

    def start_keeper(self) -> None:
        """Fork the keeper: the leader of the process group every process made here joins."""
        if self.keeper_w >= 0:
            os.close(self.keeper_w)
            self.drop_spare()  # forked while the old group was current
        r, w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the keeper; it never returns
            try:
                os.setpgid(0, 0)
                os.dup2(r, 0)
                os.closerange(3, os.sysconf("SC_OPEN_MAX"))
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                _forking.name("keeper")
                while os.read(0, 64):
                    pass
                # The agent is gone (it never ends this way itself: it kills the keeper first):
                # its directory goes first (the SIGKILL that follows ends the keeper too).
                import shutil

                shutil.rmtree(self.base, ignore_errors=True)
                os.killpg(0, signal.SIGKILL)
            finally:
                os._exit(0)
        os.close(r)
        try:
            os.setpgid(pid, pid)  # (also here: whichever runs first, the group exists now)
        except OSError:
            pass
        self.keeper, self.keeper_w = pid, w
        self.groups.append(pid)

    # -- reports (Forker's interface) ------------------------------------------------------

    def report(self, op: int, payload: bytes = b"") -> None:
        self.outbuf += _wire.frame(op, payload)
        self.write()

    def report_exits(self, frames: bytes) -> None:
        keeper_died = False
        for start in range(0, len(frames), _wire.HEADER_SIZE + _wire.EXIT.size):
            pid, _ = _wire.EXIT.unpack_from(frames, start + _wire.HEADER_SIZE)
            keeper_died = keeper_died or pid == self.keeper
        if keeper_died and not self.leaving:
            self.start_keeper()  # killed from outside: a new one guards what comes next
        self.outbuf += frames
        self.write()

    def write(self) -> None:
        """Write what the control connection takes now (none yet: it waits for it)."""
        control = self.control
        while self.outbuf and control is not None and not self.gone:
            try:
                sent = control.send(self.outbuf, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.gone = True  # the parent is gone; the end follows (its EOF)
                self.outbuf.clear()
                return
            del self.outbuf[:sent]

    # -- forking (Forker's interface) ------------------------------------------------------

    def leave_reports(self) -> None:
        """In a process forked here (child or spare): let go of everything of the agent's."""
        for fd in (self.inp, self.out, self.keeper_w):
            os.close(fd)
        if self.control is not None:
            self.control.close()
            self.control = None
        for conn, _ in self.requests.values():
            conn.close()
        self.requests = {}
        self.drop_waiting()
        self.outbuf = bytearray()
        # A fresh interpreter's empty __main__ (where eval runs and bare names resolve), not
        # the bootstrap's.
        sys.modules["__main__"] = type(sys)("__main__")

    def serve_creator(self, fd: int) -> NoReturn:
        """In a process forked here: join the group, serve the connection's commands."""
        try:
            os.setpgid(0, self.groups[-1])
        except OSError:
            pass
        server = _serve.Server(fd, os.getppid())
        server.named = False  # named "child" at its first command (it bears our name till then)
        server.start()

    # -- the loop --------------------------------------------------------------------------

    def serve(self) -> NoReturn:
        poll = select.poll()
        registered: dict[int, int] = {}
        try:
            while True:
                wanted = {self.inp: _POLLIN, self.listener.fileno(): _POLLIN, self.wake_r: _POLLIN}
                control = self.control
                if control is not None:
                    wanted[control.fileno()] = _POLLIN | (_POLLOUT if self.outbuf else 0)
                for fd in self.requests:
                    wanted[fd] = _POLLIN
                for fd in self.waiting:
                    wanted[fd] = 0  # (its hang-up only: a closed other end)
                for fd in [fd for fd in registered if fd not in wanted]:
                    poll.unregister(fd)
                    del registered[fd]
                for fd, events in wanted.items():
                    if registered.get(fd) != events:
                        poll.register(fd, events)
                        registered[fd] = events
                for fd, what in poll.poll():
                    if fd == self.wake_r:
                        self.reap()
                    elif fd == self.inp:
                        self.read_lifeline()
                    elif fd == self.listener.fileno():
                        self.accept()
                    elif fd in self.requests:
                        self.read_request(fd)
                    elif fd in self.waiting:
                        self.give_up(fd)
                    elif control is not None and fd == control.fileno():
                        if what & _POLLOUT:
                            self.write()
                        if what & ~_POLLOUT:
                            self.read_commands()
        except Exception as exc:
            from anyfork._child import _records

            self.report(_wire.ERROR, _wire.pack_values(["agent", _records.error_record(exc)]))
            self.leave()

    def read_lifeline(self) -> None:
        """The session's stdin: nothing more comes on it but its EOF, which ends the agent."""
        try:
            data = os.read(self.inp, 4096)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            self.leave()

    def read_commands(self) -> None:
        """Carry out the commands that have arrived on the control connection; leave at EOF."""
        assert self.control is not None
        dec = self.decoder
        while True:
            try:
                data = self.control.recv(dec.want())
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""  # ECONNRESET: the parent is gone
            dec.receive(data)  # (a broken stream raises WireError: serve reports it)
            while (frame := dec.next_frame()) is not None:
                op, payload, _ = frame
                if op == KILL:
                    pid, name = _wire.unpack_strings(payload)
                    self.kill(int(pid), name)
                else:
                    self.drop_spare()  # it was forked before the import
                    for module in _wire.unpack_strings(payload):
                        try:
                            __import__(module)
                        except Exception:
                            pass  # preloading only: a child importing it reports the error
            if dec.eof:
                self.leave()

    def kill(self, pid: int, name: str) -> None:
        """Send a signal to a process made here (a member of one of our groups: never to a
        process that took the number of one that has gone)."""
        sig = getattr(signal, name, None)
        if not isinstance(sig, int) or not name.startswith("SIG"):
            return
        try:
            if os.getpgid(pid) in self.groups:
                os.kill(pid, sig)
        except OSError:
            pass  # gone already

    def accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # (ECONNABORTED, EMFILE: that connection sees EOF)
            conn.setblocking(False)
            self.requests[conn.fileno()] = (conn, _wire.Decoder(REQUESTS, MAX_TOKEN))

    def read_request(self, fd: int) -> None:
        """Read a new connection's request frame (never a byte more: the rest is for whoever
        serves it), then serve it."""
        conn, dec = self.requests[fd]
        try:
            data = conn.recv(dec.want())
            dec.receive(data)
            frame = dec.next_frame()
        except (BlockingIOError, InterruptedError):
            return
        except (OSError, _wire.WireError):
            frame, data = None, b""
        if frame is None and data:
            return  # (a header arriving byte by byte)
        del self.requests[fd]
        if frame is None or (frame[0] == CONTROL and self.control is not None):
            conn.close()  # EOF, garbage, or a second control connection
            return
        if frame[0] == CONTROL:
            self.control = conn
            self.write()
            return
        if frame[0] == PARK or frame[0] == FETCH:
            self.match(frame[0], frame[1].decode("ascii", "replace"), conn)
            return
        sock = conn.detach()
        os.set_blocking(sock, True)  # the server reads blocking (``_serve``)
        if frame[0] == NEW:
            self.fork(sock)  # (closes it here; a failed fork is reported: FORK_FAILED)
        else:
            self.spawn(sock)

    def match(self, request: int, token: str, conn: socket.socket) -> None:
        """A PARK or FETCH connection: hand the parked one to its fetcher, or let it wait."""
        mine, theirs = (
            (self.parked, self.fetching) if request == PARK else (self.fetching, self.parked)
        )
        if not token or token in mine:
            conn.close()  # no token, or a second connection with it
            return
        other = theirs.pop(token, None)
        if other is None:
            mine[token] = conn
            self.waiting[conn.fileno()] = token
            return
        del self.waiting[other.fileno()]
        parked, fetcher = (conn, other) if request == PARK else (other, conn)
        try:
            parked.setblocking(True)  # the server reads blocking (``_serve``)
            fds = _wire.pack_ints([parked.fileno()])
            fetcher.sendmsg(
                [b"k"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)], socket.MSG_DONTWAIT
            )
        except OSError:
            pass  # the template has gone: the parent's connection sees EOF
        finally:
            parked.close()
            fetcher.close()

    def give_up(self, fd: int) -> None:
        """A waiting PARK or FETCH connection whose other end has closed."""
        token = self.waiting.pop(fd)
        for table in (self.parked, self.fetching):
            conn = table.get(token)
            if conn is not None and conn.fileno() == fd:
                del table[token]
                conn.close()

    def drop_waiting(self) -> None:
        for conn in (*self.parked.values(), *self.fetching.values()):
            conn.close()
        self.parked, self.fetching, self.waiting = {}, {}, {}

    def spawn(self, fd: int) -> None:
        """Exec a fresh interpreter that serves the connection ``fd`` on its fd 3."""
        target = 3
        extra = -1
        if fd == target:
            fd = extra = os.dup(fd)  # dup2(3, 3) would leave close-on-exec set
        argv = [sys.executable, "-S", "-c", self.boot, str(_wire.VERSION), str(target)]
        argv += [str(os.getpid()), *[p for p in sys.path if isinstance(p, str)]]
        try:
            os.posix_spawn(
                sys.executable,
                argv,
                os.environ,
                file_actions=[(os.POSIX_SPAWN_DUP2, fd, target), *_forking.closing_leaked(target)],
                setpgroup=self.groups[-1],
            )
        except Exception as exc:
            # Said on the connection itself, as the child would have: its first wait raises it.
            from anyfork._child import _records

            report = _wire.frame(
                _wire.ERROR, _wire.pack_values(["exec", _records.error_record(exc)])
            )
            try:
                os.write(fd, report)
            except OSError:
                pass
        finally:
            os.close(fd)
            if extra >= 0:
                os.close(extra)

    # -- the end ---------------------------------------------------------------------------

    def leave(self) -> NoReturn:
        """Kill every process made here, reap them, remove the directory, say RUNNING, exit."""
        import shutil
        import time

        self.leaving = True
        self.drop_spare()
        for group in self.groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except OSError:
                pass
        for conn, _ in self.requests.values():
            conn.close()
        self.drop_waiting()
        self.listener.close()
        shutil.rmtree(self.base, ignore_errors=True)
        # Reap what was killed (its EXITED reports go out first), for a bounded time: a spare
        # that is becoming a child may not have joined the group yet; it ends at its EOF.
        deadline = time.monotonic() + _LAST_WORDS_WAIT
        while True:
            self.reap()
            try:
                exited = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                break  # none left
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if exited is None:
                select.select([self.wake_r], [], [], remaining)
        self.report(_wire.RUNNING, _wire.U32.pack(os.getpid()))
        control = self.control
        while control is not None and self.outbuf and not self.gone:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([], [control], [], remaining)[1]:
                break  # a parent that reads nothing more: it will not wait for us either
            self.write()
        os._exit(0)


def main(base: str, settings: dict[str, str]) -> Agent:
    """Set the agent up in ``base`` (where the loader, ``_boot.load``, put the child side) and
    say READY; the loader then calls ``serve``.  Raises if the host cannot be served."""
    try:
        if os.getpgrp() != os.getpid():
            os.setpgid(0, 0)  # (not a group leader: sshd made it one, unless a shell forked)
    except OSError:
        pass
    agent = Agent(base, settings["boot"])
    protocol, pid = int(settings["protocol"]), os.getpid()
    line = f"{settings['ready']}{protocol} {_wire.VERSION} {pid} {base}\n"
    agent.ready(line.encode("utf-8", "surrogateescape"))
    return agent
