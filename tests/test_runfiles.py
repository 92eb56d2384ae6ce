"""Tests for runfiles.py: the JSONL log survives torn writes and resumes, atomic writes never leave half files."""
import json

import pytest

import runfiles


def test_jsonl_truncate_after_partial_trailing_line(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    log = runfiles.JsonlLogger(path)
    log.log({"event": "start"})  # no global_step: always kept
    for g in range(1, 6):
        log.log({"global_step": g, "loss": 1.0 / g})
    with open(path, "a") as f:
        f.write('{"global_step": 6, "lo')  # SIGKILL mid-write
    assert [r.get("global_step") for r in runfiles.read_jsonl(path)] == [None, 1, 2, 3, 4, 5]
    log.truncate_after(3)
    assert [r.get("global_step") for r in runfiles.read_jsonl(path)] == [None, 1, 2, 3]
    log.log({"global_step": 4, "loss": 0.25})
    assert [r.get("global_step") for r in runfiles.read_jsonl(path)] == [None, 1, 2, 3, 4]


def test_jsonl_logger_reopen_drops_partial_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"global_step": 1}\n{"global_st')
    runfiles.JsonlLogger(path).log({"global_step": 2})
    assert path.read_text() == '{"global_step": 1}\n{"global_step": 2}\n'


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("boom during serialisation")


def test_atomic_writes_never_leave_half_files(tmp_path):
    path = tmp_path / "sub" / "summary.json"
    runfiles.atomic_write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        runfiles.atomic_write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    torch = pytest.importorskip("torch")
    ckpt = tmp_path / "ckpt.pt"
    runfiles.atomic_torch_save({"w": torch.ones(3)}, ckpt)
    with pytest.raises(RuntimeError, match="boom"):  # fails mid-serialisation
        runfiles.atomic_torch_save({"w": torch.zeros(1000), "bad": _Unpicklable()}, ckpt)
    assert torch.equal(torch.load(ckpt)["w"], torch.ones(3))
    runfiles.atomic_write_text(tmp_path / "t.md", "hi\n")
    with pytest.MonkeyPatch.context() as mp:  # a crash after the bytes are written but before the rename
        mp.setattr(runfiles.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("disk gone")))
        with pytest.raises(runfiles.Fault, match="cannot write .*t.md: disk gone"):  # names the file
            runfiles.atomic_write_text(tmp_path / "t.md", "new text\n")
    assert (tmp_path / "t.md").read_text() == "hi\n"
    assert sorted(p.name for p in tmp_path.rglob("*.tmp")) == []
