"""Functions of the main program run in children (issue 9, point 2).

A child imports the parent's main script under another name (``__mp_main__``, as multiprocessing
does) to find a function of it: with or without an ``if __name__ == "__main__":`` guard, by path
or (``python -m``) by module name.  Without a file to import (``python -c``, standard input, an
interactive session) or for a lambda, the error names the ways out.  Whole programs from
``tests/scripts/``, each run with a deadline; each script's docstring says what it does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import anyfork
from anyfork._child import _main as child_main
from anyfork._core import _templates
from helpers import SCRIPTS, children, result, run_script


def imports_of(log: Path) -> list[tuple[int, str]]:
    """``(pid, __name__)`` of every import of a script, in order (``$MAIN_IMPORTS``)."""
    entries = [line.split() for line in log.read_text().splitlines()]
    return [(int(pid), name) for pid, name in entries]


def test_a_guarded_scripts_functions_run_in_children(tmp_path: Path) -> None:
    log = tmp_path / "imports"
    out = result(run_script("main_guarded.py", "an-arg", env={"MAIN_IMPORTS": str(log)}))
    kids = [out["object"], out["string"], out["bare"], *out["async"], out["exec"]]
    for kid in [*kids, *out["template_kids"]]:
        # Imported under another name: the guarded block did not run in the child (it would
        # have started processes of its own), and __main__ is that module.
        assert kid["name"] == "__mp_main__"
        assert kid["main_name"] == "__mp_main__"
        assert kid["main_is_mp_main"]
        assert kid["argv"] == ["an-arg"]  # the program's argv, as its top level saw it
        assert kid["pickled_here"]
        assert kid["pickled_as_main"]
    assert out["string"]["args"] == ["s"]
    assert [kid["args"] for kid in out["async"]] == [["a0"], ["a1"]]
    assert out["exec"]["ppid"] == out["main_pid"]
    template = out["template_pid"]
    assert {kid["ppid"] for kid in out["template_kids"]} == {template}
    assert out["point"] == ["Point", 7, True]
    assert out["rpc"] == 144
    assert out["executor"] == 25

    imports = imports_of(log)
    assert imports[0] == (out["main_pid"], "__main__")
    # Once in each child that needed the script, once in the template for all its children;
    # never for a name eval() defined, nor in the template's children.
    pids = [kid["pid"] for kid in kids]
    pids += [template, out["point_pid"], out["rpc_pid"], out["executor_pid"]]
    assert sorted(imports[1:]) == sorted((pid, "__mp_main__") for pid in pids)
    imported = {pid for pid, _ in imports}
    assert out["eval_pid"] not in imported
    assert not {kid["pid"] for kid in out["template_kids"]} & imported


def test_a_module_run_with_dash_m_is_imported_by_name(tmp_path: Path) -> None:
    out = result(run_script("mainpkg.prog", module=True))
    assert out["main_spec"] == "mainpkg.prog"
    assert out["child"]["name"] == "__mp_main__"
    assert out["child"]["spec"] == "mainpkg.prog"  # found by module name, not by path


def _line_of(script: str, marker: str) -> int:
    lines = (SCRIPTS / script).read_text().splitlines()
    (number,) = [i for i, line in enumerate(lines, 1) if line.endswith(marker)]
    return number


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_unguarded_script_stops_at_its_first_anyfork_call(mode: str, tmp_path: Path) -> None:
    """The child runs the script's top level up to its first anyfork call (in an event loop
    too), which stops the import there: no recursion, what was defined above is found."""
    log = tmp_path / "imports"
    out = result(run_script("main_unguarded.py", mode, env={"MAIN_IMPORTS": str(log)}))
    assert out["before"]["name"] == "__mp_main__"
    marker = "# FIRST ANYFORK CALL" + (" (async)" if mode == "async" else "")
    stop = f"main_unguarded.py:{_line_of('main_unguarded.py', marker)}"
    error = out["after_error"]
    assert f"its import stopped at {SCRIPTS / 'main_unguarded.py'}:" in error
    assert stop in error
    assert "'after'" in error
    assert "AnyforkError" in out["after_error_types"]  # a failure of run(): both types
    # The program, and each of its two children once (the top level up to the stop).
    imports = imports_of(log)
    assert [name for _, name in imports] == ["__main__", "__mp_main__", "__mp_main__"]
    assert imports[1][0] == out["before"]["pid"]


NO_FILE = """
import sys
import anyfork, tmpl_funcs

def work(sock):
    sock.sendall(b"from main_template")

out = {}
try:
    anyfork.new().run_blocking(work, timeout=10)
except TypeError as exc:
    out["error"] = str(exc)
# The ways out the message names work: eval(), and a template forked from this program.
code = "def work(sock):\\n    sock.sendall(b'from eval')\\n"
sock = anyfork.new().eval(code).run_blocking("work", timeout=10)
out["eval"] = tmpl_funcs.read_all(sock).decode()
tmpl = anyfork.main_template()
out["main_template"] = tmpl_funcs.read_all(tmpl.fork().run_blocking(work, timeout=10)).decode()
tmpl.close()
# A bare name nobody defined: the child says why it cannot look in the program.
try:
    anyfork.new().run_blocking("nowhere", timeout=10)
except AttributeError as exc:
    out["bare_error"] = str(exc)
tmpl_funcs.emit(out)
"""


@pytest.mark.parametrize(
    ("how", "why"), [("-c", "`python -c` code"), ("stdin", "code read from standard input")]
)
def test_a_main_module_without_a_file_says_why_and_the_ways_out(how: str, why: str) -> None:
    if how == "-c":
        out = result(run_script("-c", code=NO_FILE))
    else:
        out = result(run_script("-", stdin=NO_FILE))
    error = out["error"]
    assert error.startswith(f"work is defined in the main module, which is {why}:")
    for way in ("importable module", "eval()", "anyfork.main_template()", "cloudpickle"):
        assert way in error
    assert out["eval"] == "from eval"
    assert out["main_template"] == "from main_template"
    assert f"the parent's main module is {why}, which has no file" in out["bare_error"]


def test_a_lambda_or_a_local_function_names_the_ways_out() -> None:
    def local(sock: object) -> None:
        pass

    for func in (local, lambda sock: None):
        proc = anyfork.new()
        with pytest.raises(TypeError, match=r"a lambda or a local function\).*eval\(\).*cloud"):
            proc.run_blocking(func, timeout=10)
        proc.close()


ENTRY_POINTS = {
    "anyfork.new()": anyfork.new,
    "anyfork.new_exec()": anyfork.new_exec,
    "anyfork.new_from_fh()": lambda: anyfork.new_from_fh(-1),
    "anyfork.start_early()": anyfork.start_early,
    "anyfork.main_template()": anyfork.main_template,
}


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_entry_points_refuse_while_a_child_imports_the_main_script(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a child importing its parent's main script sees (here: this process pretends to
    be one): a ``BaseException`` (so the script's ``except Exception`` lets it through) that
    says what happened, and nothing is started."""
    monkeypatch.setattr(child_main, "importing", "/somewhere/prog.py")
    before = children()
    early = _templates._early
    with pytest.raises(child_main.StopMainImport) as info:
        ENTRY_POINTS[name]()
    assert not isinstance(info.value, Exception)
    message = str(info.value)
    assert message.startswith(f"{name} was called while this child process imports")
    assert "(/somewhere/prog.py)" in message
    assert 'if __name__ == "__main__":' in message
    assert children() == before
    assert _templates._early is early


def test_main_is_sent_once_to_a_lineage() -> None:
    """Where the main script is (MAIN) is sent once per lineage: not to a child whose template
    was told before forking it, but to one forked before; and importing it now (a template's
    ``now``) is a level above knowing where it is, so it is sent even where that is known."""
    with anyfork.new_exec() as tmpl:
        before = tmpl.fork()  # (a FORK frame before the MAIN command)
        tmpl._prepare_func(None)
        after = tmpl.fork()
        assert after._fork_frame > tmpl._main_sent[1]
        queued = after._chan.queued
        assert after._prepare_func(None) == ""
        assert after._chan.queued == queued  # nothing sent: its template knew already
        assert after._main_sent == {}
        queued = before._chan.queued
        before._prepare_func(None)
        assert before._chan.queued == queued + 1  # forked before its template knew: told now
        assert list(before._main_sent) == [1]
        after._prepare_func(None, now=True)
        assert list(after._main_sent) == [2]  # told to import at once: more than it knew
        for proc in (before, after):
            assert proc.wait_started_blocking(timeout=10) > 0  # each took its commands
            proc.close()
