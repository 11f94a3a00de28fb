"""Files passed with ``send_fh`` arrive as the kind of file object sent (issue 9, point 7).

A buffered file arrives buffered (reading a pipe by lines from an unbuffered ``FileIO`` makes a
system call per byte: 200 times slower), a text file as a text file of the same encoding, an int
fd or a ``FileIO`` unbuffered, as before.  What a child writes into a buffered file is flushed
when its function returns, and before a template forks (never lost, never written twice).
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import anyfork
from helpers import recv_all


def test_a_buffered_pipe_arrives_buffered_and_reads_by_lines() -> None:
    r, w = os.pipe()
    reader = open(r, "rb")  # noqa: SIM115  # the test closes it
    try:
        proc = anyfork.new().send_fh(reader)
        with proc.run_blocking("childfuncs:read_lines", timeout=10) as sock:
            os.write(w, b"".join(b"line %d\n" % i for i in range(1000)))
            os.close(w)
            w = -1
            kind, lines = ast.literal_eval(recv_all(sock).decode())
    finally:
        reader.close()
        if w >= 0:
            os.close(w)
    assert kind == "BufferedReader"
    assert lines == [f"line {i}" for i in range(1000)]


def test_each_kind_of_file_arrives_as_the_kind_sent(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"")
    r, w = os.pipe()
    files = [
        open(path, "rb"),  # noqa: SIM115
        open(path, "ab"),  # noqa: SIM115
        open(path, encoding="latin-1"),  # noqa: SIM115
        open(path, "a", encoding="utf-16", errors="replace"),  # noqa: SIM115
        open(path, "rb", buffering=0),  # noqa: SIM115
    ]
    try:
        proc = anyfork.new().send_fh(*files, r)
        with proc.run_blocking("childfuncs:describe_files", timeout=10) as sock:
            described = ast.literal_eval(recv_all(sock).decode())
    finally:
        for f in files:
            f.close()
        os.close(r)
        os.close(w)
    assert described == [
        ("BufferedReader", "rb", None),
        ("BufferedWriter", "wb", None),
        ("TextIOWrapper", "r", "latin-1"),
        ("TextIOWrapper", "w", "utf-16"),
        ("FileIO", "rb", None),
        ("FileIO", "rb", None),  # an int fd: unbuffered, as the docs say (wrap it to read lines)
    ]


def test_what_a_child_writes_unflushed_is_not_lost(tmp_path: Path) -> None:
    binary, text = tmp_path / "b", tmp_path / "t"
    with open(binary, "wb") as fb, open(text, "w", encoding="utf-8") as ft:
        proc = anyfork.new().send_fh(fb, ft)
        with proc.run_blocking("childfuncs:write_unflushed", timeout=10) as sock:
            assert recv_all(sock) == b"written"
        assert proc.wait_blocking(timeout=10) == 0
    assert binary.read_bytes() == b"line 0\n"
    assert text.read_text() == "line 1\n"


def test_a_templates_buffered_writes_are_not_repeated_by_its_children() -> None:
    """A template that wrote into a buffered file (not flushed) and then forks: the buffer is
    flushed once, before the fork, not once more by every child at its exit."""
    r, w = os.pipe()
    writer = open(w, "wb")  # noqa: SIM115  # closed below
    try:
        tmpl = anyfork.new().send_fh(writer)
        tmpl.eval("import anyfork.worker\nout = anyfork.worker.take_args()[0]\nout.write(b'T')")
        for _ in range(3):
            child = tmpl.fork().eval("out.write(b'c')")
            child.run_blocking("socket:socket.close", timeout=10).close()
            child.wait_blocking(timeout=10)
        tmpl.close()
        tmpl.wait_blocking(timeout=10)
    finally:
        writer.close()
    data = b""
    while chunk := os.read(r, 100):
        data += chunk
    os.close(r)
    assert sorted(data.decode()) == ["T", "c", "c", "c"]
