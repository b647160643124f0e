"""`searchrl augment merge`: the shards of one sharded job become the unsharded job's output."""

from __future__ import annotations

import json

import pytest
from test_augment import ScriptedEngine, make_items, read_records, run_cli

from searchrl.augment import CorpusAugmentationJob, ExpansionPolicy
from searchrl.augment.merge import merge_shards
from searchrl.errors import ConfigError, DataError


def run_shards(tmp_path, items, count=3, **options):
    folders = []
    for index in range(count):
        folder = tmp_path / f"shard{index}"
        CorpusAugmentationJob(
            items, folder, role="document", engine=ScriptedEngine(), shard=(index, count), batch_size=5, **options
        ).run(show_progress=False)
        folders.append(folder)
    return folders


def test_merged_shards_equal_the_unsharded_job_which_then_has_nothing_left(tmp_path):
    items = make_items(40)
    full = CorpusAugmentationJob(items, tmp_path / "full", role="document", engine=ScriptedEngine(), batch_size=7)
    full_manifest = full.run(show_progress=False)
    folders = run_shards(tmp_path, items)

    merged = merge_shards(tmp_path / "merged", list(reversed(folders)))  # any order of folders
    records = read_records(tmp_path / "merged" / "expansions.jsonl")
    assert {r["id"]: r for r in records} == {r["id"]: r for r in read_records(full.expansions_path)}
    assert len(records) == len(items)
    assert merged["settings"] == full_manifest["settings"] and merged["status"] == "complete"
    assert merged["counts"]["done"] == merged["counts"]["ok"] == 40 and merged["counts"]["remaining"] == 0

    def must_not_run():
        raise AssertionError("a merged folder has nothing left to generate")

    again = CorpusAugmentationJob(items, tmp_path / "merged", role="document", engine=must_not_run,
                                  model_name="scripted", engine_name="ScriptedEngine").run(show_progress=False)
    assert again["status"] == "complete" and again["counts"]["done"] == 40


def test_merge_refuses_shards_that_do_not_make_one_whole_job(tmp_path):
    items = make_items(30)
    folders = run_shards(tmp_path, items)
    with pytest.raises(ConfigError, match="missing shard.* 1/3"):
        merge_shards(tmp_path / "out", [folders[0], folders[2]])
    with pytest.raises(ConfigError, match="given twice"):
        merge_shards(tmp_path / "out", [*folders, folders[1]])

    different = tmp_path / "different"
    CorpusAugmentationJob(items, different, role="document", engine=ScriptedEngine(), shard=(1, 3),
                          policy=ExpansionPolicy(max_words=3)).run(show_progress=False)
    with pytest.raises(ConfigError, match="other settings .*policy.max_words"):
        merge_shards(tmp_path / "out", [folders[0], different, folders[2]])

    partial = tmp_path / "partial"
    CorpusAugmentationJob(items, partial, role="document", engine=ScriptedEngine(), shard=(1, 3), limit=2).run(
        show_progress=False
    )
    with pytest.raises(ConfigError, match="--limit 2"):
        merge_shards(tmp_path / "out", [folders[0], partial, folders[2]])
    with pytest.raises(ConfigError, match="not a shard"):
        full = tmp_path / "full"
        CorpusAugmentationJob(items, full, role="document", engine=ScriptedEngine()).run(show_progress=False)
        merge_shards(tmp_path / "out", [full])
    assert not (tmp_path / "out" / "expansions.jsonl").exists()  # nothing written by a refused merge


def test_merge_catches_edited_files_and_keeps_existing_output(tmp_path):
    items = make_items(30)
    folders = run_shards(tmp_path, items)
    path = folders[1] / "expansions.jsonl"
    original = path.read_text()
    lines = original.splitlines(keepends=True)

    path.write_text(original + lines[0])  # a duplicated line
    with pytest.raises(DataError, match="records, but the manifest counts|also in"):
        merge_shards(tmp_path / "out", folders)
    foreign = next(i for i in items if i not in {r["id"] for r in read_records(folders[1] / "expansions.jsonl")})
    record = {**json.loads(lines[0]), "id": foreign}
    path.write_text("".join(lines[1:]) + json.dumps(record) + "\n")  # an id of another shard
    with pytest.raises(DataError, match=f"{foreign}.*(belongs to shard|also in)"):
        merge_shards(tmp_path / "out", folders)

    path.write_text(original)
    merge_shards(tmp_path / "out", folders)
    with pytest.raises(ConfigError, match="holds expansions already"):
        merge_shards(tmp_path / "out", folders)
    merge_shards(tmp_path / "out", folders, force=True)


def test_cli_augment_merge(tmp_path, capsys):
    folders = run_shards(tmp_path, make_items(12), count=2)
    code = run_cli(["augment", "merge", str(tmp_path / "out"), *map(str, folders)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["shards"] == 2 and summary["done"] == 12
    code = run_cli(["augment", "merge", str(tmp_path / "out2"), str(folders[0])])
    assert code == 2
    assert "missing shard(s) 1/2" in capsys.readouterr().err
