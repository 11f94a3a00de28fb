"""The one error record (``anyfork._child._records``) and the one ``rebuild`` of it
(``anyfork._errors``): what the parent raises for an exception a child reported."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

import anyfork
from anyfork import _errors
from anyfork._child import _records


def _record_of(exc: BaseException) -> bytes:
    try:
        raise exc
    except BaseException as raised:
        return _records.error_record(raised)


@given(st.lists(st.binary(max_size=50), max_size=6))
def test_fields_roundtrip(fields: list[bytes]) -> None:
    assert _records.unpack_fields(_records.pack_fields(fields)) == fields


def test_record_roundtrip_and_broken_records() -> None:
    rec = _records.pack(b"\x80pickled", "builtins", "ValueError", "bad \udcff", "Traceback...")
    assert _records.unpack(rec) == (
        b"\x80pickled",
        "builtins",
        "ValueError",
        "bad ?",
        "Traceback...",
    )
    with pytest.raises(_records.RecordError, match=r"^an error record has 5 fields, not 1$"):
        _records.unpack(_records.pack_fields([b"a"]))
    with pytest.raises(_records.RecordError, match=r"^truncated field$"):
        _records.unpack_fields(b"\x00\x00\x00\x05ab")
    with pytest.raises(anyfork.ProtocolError, match=r"^a broken error record \(truncated field\)"):
        _errors.rebuild(b"\x00\x00\x00\x05ab", "(in require of process pid 1)", ours=True)


@given(st.binary(max_size=64))
def test_garbage_records_raise_only_protocol_error(data: bytes) -> None:
    try:
        _errors.rebuild(data, "(ctx)", ours=True)
    except anyfork.ProtocolError:
        pass


def test_ours_is_both_its_type_and_an_anyfork_error() -> None:
    exc = _errors.rebuild(
        _record_of(ModuleNotFoundError("No module named 'x'", name="x")),
        "(in require of process pid 7)",
        ours=True,
    )
    assert isinstance(exc, ModuleNotFoundError)
    assert isinstance(exc, anyfork.AnyforkError)
    assert type(exc).__name__ == "ModuleNotFoundError"
    assert exc.name == "x"
    assert str(exc) == "No module named 'x'"
    assert exc.__notes__ == ["(in require of process pid 7)"]
    assert isinstance(exc.__cause__, anyfork.RemoteTraceback)
    assert "ModuleNotFoundError" in exc.__cause__.text
    # One class per type, and it pickles (a pool hands errors between threads and processes).
    again = _errors.rebuild(_record_of(ModuleNotFoundError("y")), "(c)", ours=True)
    assert type(again) is type(exc)
    back = pickle.loads(pickle.dumps(exc))
    assert isinstance(back, ModuleNotFoundError)
    assert isinstance(back, anyfork.AnyforkError)
    assert back.name == "x"


def test_user_errors_keep_their_own_type_only() -> None:
    exc = _errors.rebuild(_record_of(KeyError("k")), "(raised in worker pid 3)", ours=False)
    assert type(exc) is KeyError
    assert not isinstance(exc, anyfork.AnyforkError)


def test_c_fields_survive() -> None:
    exc = _errors.also_anyfork(OSError(2, "gone", "f"))
    assert isinstance(exc, FileNotFoundError)
    assert (exc.errno, exc.strerror, exc.filename) == (2, "gone", "f")
    assert str(exc) == "[Errno 2] gone: 'f'"
    attr = _errors.also_anyfork(AttributeError("a", name="n", obj=3))
    assert isinstance(attr, AttributeError)
    assert (attr.name, attr.obj) == ("n", 3)


def test_unrebuildable_and_named_types() -> None:
    rec = _records.pack(b"", "mod", "Custom", "boom", "Traceback...")
    exc = _errors.rebuild(rec, "(ctx)", ours=True)
    assert isinstance(exc, anyfork.RemoteError)
    assert (str(exc), exc.type_name) == ("mod.Custom: boom", "mod.Custom")
    encode = _errors.rebuild(_records.anyfork_error("EncodeError", "cannot"), "(ctx)", ours=False)
    assert type(encode) is anyfork.EncodeError
    assert encode.side == "child"
    # SystemExit and friends never become exceptions that would end the parent.
    exited = _errors.rebuild(_record_of(SystemExit(3)), "(ctx)", ours=True)
    assert isinstance(exited, anyfork.RemoteError)
    assert exited.type_name == "SystemExit"
