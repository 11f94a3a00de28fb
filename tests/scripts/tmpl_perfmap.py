"""Exec'd templates and their children under ``PYTHONPERFSUPPORT=1`` (3.12+): each interpreter
opens its perf map (``/tmp/perf-<pid>.map``) during its own start-up, and must keep it.

Usage: ``tmpl_perfmap.py``.  Sets the variable for what it execs (not for itself), leaves a
pipe inheritable (as libraries do), then runs a function in a child of the default template,
in an exec'd process, and in a child forked from an exec'd template; each reports its pid, its
parent's, which fds of both hold their own perf map, every fd it holds, and whether one of
them is the pipe.  Prints one JSON
line.
"""

from __future__ import annotations

import json
import os

import tmpl_funcs

import anyfork

os.environ["PYTHONPERFSUPPORT"] = "1"
leaked = os.pipe()
for fd in leaked:
    os.set_inheritable(fd, True)
pipe = {os.fstat(fd).st_ino for fd in leaked}

CHECK = """
import json, os

def perf_fds(pid):
    found = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}") == f"/tmp/perf-{pid}.map":
                found.append(int(name))
        except OSError:
            pass  # (the listing's own)
    return found

def check(sock, *args):
    pid, ppid = os.getpid(), os.getppid()
    report = {"pid": pid, "ppid": ppid, "own": perf_fds(pid), "parent": perf_fds(ppid)}
    held = [int(name) for name in os.listdir("/proc/self/fd")]
    report["fds"] = sorted(fd for fd in held if os.path.exists(f"/proc/self/fd/{fd}"))
    report["inodes"] = [os.fstat(fd).st_ino for fd in report["fds"]]
    sock.sendall(json.dumps(report).encode())
"""


def run(proc: anyfork.Process) -> dict[str, object]:
    with proc.eval(CHECK).run_blocking("check", timeout=60) as sock:
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    report: dict[str, object] = json.loads(data)
    report["holds_leaked"] = not pipe.isdisjoint(report.pop("inodes"))  # type: ignore[arg-type]
    return report


out = {"new": run(anyfork.new()), "new_exec": run(anyfork.new_exec())}
with anyfork.new_exec() as tmpl:
    out["exec_fork"] = run(tmpl.fork())
tmpl_funcs.emit(out)
