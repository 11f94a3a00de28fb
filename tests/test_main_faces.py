"""A function of the main script through every face that calls functions in workers (issue 9,
point 2): ``anyfork.rpc``, ``rpc_blocking``, ``Pool``, ``BlockingPool``, ``PoolExecutor.submit``
and ``.map``, in a script with the ``__main__`` guard and in one without; and the errors that
name the ways out, for a lambda and for a main module without a file (``python -c``).  Whole
programs (``tests/scripts/main_faces.py``), each run with a deadline."""

from __future__ import annotations

from typing import Any

import pytest

from helpers import SCRIPTS, result, run_script

RPC_FACES = ("rpc", "rpc_blocking")
POOL_FACES = ("pool", "blocking_pool")
EXECUTOR_FACES = ("submit", "executor_map")
FACES = (*RPC_FACES, *POOL_FACES, *EXECUTOR_FACES)


def squares(out: dict[str, Any], face: str) -> list[int]:
    """The squares a face computed (each result is ``[x * x, worker pid]``), checking that the
    workers are other processes."""
    value = out[face]
    assert "error" not in value, f"{face}: {value}"
    if face in RPC_FACES or face == "submit":
        pairs = [value]
    elif face in POOL_FACES:
        pairs = [value[0], *value[1]]
    else:
        pairs = value
    assert all(pid not in (0, out["main_pid"]) for _, pid in pairs)
    return [square for square, _ in pairs]


EXPECTED = {
    "rpc": [9],
    "rpc_blocking": [25],
    "pool": [16, 0, 1, 4],
    "blocking_pool": [36, 0, 1, 4],
    "submit": [49],
    "executor_map": [0, 1, 4],
}


@pytest.mark.parametrize("mode", ["guarded", "unguarded"])
def test_every_face_runs_a_function_of_the_script_and_refuses_a_lambda(mode: str) -> None:
    out = result(run_script("main_faces.py", mode))
    for face in FACES:
        assert squares(out, face) == EXPECTED[face], face
        error = out[face + "_lambda"]
        assert "a lambda or a local function" in error["error"], face
        assert "Ways out: define it at module level" in error["error"], face
        assert "cloudpickle" in error["error"], face
        # A pool refuses it in its constructor (an argument error, a TypeError); the others
        # fail the start or the call (also an AnyforkError).
        assert ("TypeError" if face in POOL_FACES else "AnyforkError") in error["types"], face


def test_python_dash_c_names_the_ways_out_through_every_face() -> None:
    """A main module without a file: the faces that are given the function say so at once;
    the pools, given it by name, fail their workers' start with the child's error (which
    names the ways out too); the executor's calls, which carry it pickled, cannot be decoded
    in a worker."""
    code = (SCRIPTS / "main_faces.py").read_text()
    out = result(run_script("-c", code=code, env={"FACES_MODE": "guarded"}))
    for face in RPC_FACES:
        error = out[face]["error"]
        assert error.startswith("square is defined in the main module, which is `python -c`")
        assert "Ways out: define it in an importable module" in error
        assert "anyfork.main_template()" in error
    for face in POOL_FACES:
        error = out[face]["error"]
        assert "the parent's main module is `python -c` code, which has no file" in error
        assert "define it in an importable module, or in this process with eval()" in error
    for face in EXECUTOR_FACES:
        assert "Can't get attribute 'square'" in out[face]["error"]
        assert "AnyforkError" in out[face]["types"]
