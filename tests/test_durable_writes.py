"""Writes a kill cannot tear: best/ swaps, config.yaml and JSONL replaces.

A kill is simulated by making one file-system step raise part-way through an update; after
every such interruption the run directory must still hold a complete ``best/`` that agrees
with ``best.json``, and the next update must finish cleanly.
"""

from __future__ import annotations

import json
import os

import pytest
import yaml

import searchrl.runs as runs_module
from searchrl.data import io as data_io
from searchrl.runs import RunDirectory


class Killed(BaseException):
    """Stands in for SIGKILL: not an Exception, so no handler in the code under test catches it."""


def _saver(tag: str):
    def save(directory):
        (directory / "adapter_model.safetensors").write_text(tag)
        (directory / "adapter_config.json").write_text(json.dumps({"tag": tag}))

    return save


def _assert_consistent(run: RunDirectory) -> None:
    """best/ exists, is complete, and holds the checkpoint of the step best.json names."""
    assert run.best_dir.is_dir(), "best/ is missing"
    tag = (run.best_dir / "adapter_model.safetensors").read_text()
    assert json.loads((run.best_dir / "adapter_config.json").read_text())["tag"] == tag
    assert run.best()["step"] == int(tag.split("-")[1])
    assert json.loads(run.best_json_path.read_text())["step"] == int(tag.split("-")[1])


def _kill_at(monkeypatch, target, name: str, n: int):
    """Make the ``n``-th call of ``target.name`` raise :class:`Killed` (before doing anything)."""
    original = getattr(target, name)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise Killed
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapper)
    return calls


@pytest.mark.parametrize("step", ["rename", "rmtree", "write_best_json", "save"])
def test_a_kill_during_a_best_update_leaves_a_complete_consistent_best(tmp_path, monkeypatch, step):
    for n in range(1, 6):
        run = RunDirectory.create_or_resume(tmp_path / f"run-{n}", {"lr": 1})
        assert run.update_best(1, "ndcg", 0.1, save=_saver("step-1"))
        _assert_consistent(run)
        with monkeypatch.context() as patch:
            if step == "rename":
                _kill_at(patch, runs_module.os, "rename", n)
                patch.setattr(runs_module, "_exchange_paths", lambda a, b: False)  # the two-rename fallback
            elif step == "rmtree":
                _kill_at(patch, runs_module.shutil, "rmtree", n)
            elif step == "write_best_json":
                _kill_at(patch, runs_module, "atomic_write_text", n)
            else:
                def broken_save(directory):
                    (directory / "adapter_model.safetensors").write_text("half")
                    raise Killed
                try:
                    run.update_best(2, "ndcg", 0.2, save=broken_save)
                except Killed:
                    pass
            if step != "save":
                try:
                    run.update_best(2, "ndcg", 0.2, save=_saver("step-2"))
                except Killed:
                    pass
        # What a reader finds right after the kill, and after reopening the run.
        reopened = RunDirectory.create_or_resume(tmp_path / f"run-{n}", {"lr": 1})
        _assert_consistent(reopened)
        assert reopened.update_best(3, "ndcg", 0.3, save=_saver("step-3"))
        _assert_consistent(reopened)
        leftovers = sorted(p.name for p in reopened.path.iterdir() if p.name.startswith("best"))
        assert leftovers == ["best", "best.json"]


def test_without_an_atomic_exchange_a_kill_between_the_renames_is_undone_by_the_next_read(tmp_path, monkeypatch):
    run = RunDirectory.create_or_resume(tmp_path / "run", {"lr": 1})
    run.update_best(1, "ndcg", 0.1, save=_saver("step-1"))
    monkeypatch.setattr(runs_module, "_exchange_paths", lambda a, b: False)
    _kill_at(monkeypatch, runs_module.os, "rename", 2)
    with pytest.raises(Killed):
        run.update_best(2, "ndcg", 0.2, save=_saver("step-2"))
    monkeypatch.undo()
    reader = RunDirectory(tmp_path / "run")
    assert reader.best()["step"] == 1
    _assert_consistent(reader)


@pytest.mark.parametrize("n", range(1, 4))
def test_with_the_atomic_exchange_best_is_never_missing_even_before_a_repair(tmp_path, monkeypatch, n):
    """What another program (``--model RUN/best``) sees right after the kill, with no repair."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    if not runs_module._exchange_paths(tmp_path / "a", tmp_path / "b"):
        pytest.skip("no renameat2(RENAME_EXCHANGE) on this system")
    run = RunDirectory.create_or_resume(tmp_path / "run", {"lr": 1})
    run.update_best(1, "ndcg", 0.1, save=_saver("step-1"))
    for target, name in ((runs_module.shutil, "rmtree"), (runs_module, "atomic_write_text"), (runs_module, "_exchange_paths")):
        with monkeypatch.context() as patch:
            _kill_at(patch, target, name, n)
            try:
                run.update_best(2 + n, "ndcg", 0.2 + n, save=_saver(f"step-{2 + n}"))
            except Killed:
                pass
        inner = json.loads((run.best_dir / "best.json").read_text())
        tag = (run.best_dir / "adapter_model.safetensors").read_text()
        assert inner["step"] == int(tag.split("-")[1])
        _assert_consistent(run)


def test_best_swap_uses_an_atomic_exchange_when_the_os_has_one(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "x").write_text("b")
    if not runs_module._exchange_paths(a, b):
        pytest.skip("no renameat2(RENAME_EXCHANGE) on this system")
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"


def test_config_yaml_is_replaced_atomically_and_only_when_it_changed(tmp_path, monkeypatch):
    run = RunDirectory.create_or_resume(tmp_path / "run", {"lr": 1, "steps": 10})
    before = run.config_path.stat()
    writes = []
    original = runs_module.atomic_write_text
    monkeypatch.setattr(runs_module, "atomic_write_text", lambda path, text: (writes.append(path), original(path, text)))
    RunDirectory.create_or_resume(tmp_path / "run", {"lr": 1, "steps": 10})
    assert run.config_path not in writes
    assert run.config_path.stat().st_mtime_ns == before.st_mtime_ns
    # A changed (allowed) key rewrites it, through the atomic writer, and a kill there keeps the old file.
    _kill_at(monkeypatch, runs_module, "atomic_write_text", 1)
    with pytest.raises(Killed):
        RunDirectory.create_or_resume(tmp_path / "run", {"lr": 1, "steps": 20}, mutable_keys=["steps"])
    assert yaml.safe_load(run.config_path.read_text()) == {"lr": 1, "steps": 10}
    monkeypatch.undo()
    again = RunDirectory.create_or_resume(tmp_path / "run", {"lr": 1, "steps": 20}, mutable_keys=["steps"])
    assert again.config()["steps"] == 20


def test_atomic_write_text_fsyncs_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(data_io.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd)))
    monkeypatch.setattr(data_io.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b)))
    data_io.atomic_write_text(tmp_path / "x.yaml", "a: 1\n")
    assert (tmp_path / "x.yaml").read_text() == "a: 1\n"
    assert events[:2] == ["fsync", "replace"]
    assert not [p for p in tmp_path.iterdir() if p.name != "x.yaml"]


@pytest.mark.parametrize("name", ["records.jsonl", "records.jsonl.gz"])
def test_write_jsonl_fsyncs_the_data_before_the_rename(tmp_path, monkeypatch, name):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_size))
        real_fsync(fd)

    monkeypatch.setattr(data_io.os, "fsync", fsync)
    monkeypatch.setattr(data_io.os, "replace", lambda a, b: (events.append(("replace", None)), real_replace(a, b)))
    assert data_io.write_jsonl(tmp_path / name, [{"id": str(i)} for i in range(100)]) == 100
    first_replace = events.index(("replace", None))
    synced = [size for kind, size in events[:first_replace] if kind == "fsync"]
    assert synced and synced[0] == (tmp_path / name).stat().st_size  # the whole file, compressed or not
    assert [r for _, r in data_io.iter_jsonl(tmp_path / name)][-1] == {"id": "99"}
