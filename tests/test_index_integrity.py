"""Saved indexes: tampered or damaged ones are refused, never crash or answer wrongly; re-indexing is atomic.

Two layers are tested separately. The manifest's checksums catch any change made after an index
was written. Behind them, every loaded array is validated, which is what a crafted index (one
whose checksums were recomputed) meets: such cases re-seal the manifest with ``write_manifest``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from searchrl.cli import main
from searchrl.data import Document
from searchrl.errors import ConfigError, IndexFileError
from searchrl.retrieval import BM25Retriever, DenseRetriever, HybridRetriever, load_retriever
from searchrl.retrieval.base import MANIFEST_NAME, write_manifest

CORPUS = [
    Document("d1", "The oxygen tank exploded during the Apollo 13 mission."),
    Document("d2", "Fuel cells produced electrical power and drinking water."),
    Document("d3", "The crew splashed down safely in the Pacific Ocean."),
    Document("d4", "Lithium hydroxide canisters removed carbon dioxide from the cabin."),
]
PAYLOAD = Path("bm25s")


@pytest.fixture
def index_dir(tmp_path) -> Path:
    directory = tmp_path / "index"
    BM25Retriever().index(CORPUS, show_progress=False).save(directory)
    return directory


def manifest_of(directory: Path) -> dict:
    return json.loads((directory / MANIFEST_NAME).read_text(encoding="utf-8"))


def reseal(directory: Path, **changes) -> None:
    """Rewrite the manifest with fresh checksums, as someone crafting an index would."""
    manifest = manifest_of(directory)
    manifest.update(changes)
    write_manifest(directory, manifest["kind"], manifest["params"], manifest["doc_ids"], list(manifest["files"]))


def rewrite_array(directory: Path, name: str, change) -> None:
    path = directory / PAYLOAD / f"{name}.csc.index.npy"
    np.save(path, change(np.load(path)), allow_pickle=False)
    reseal(directory)


def refused(directory: Path, *fragments: str) -> IndexFileError:
    with pytest.raises(IndexFileError) as err:
        load_retriever(directory)
    message = err.value.format()
    for fragment in fragments:
        assert fragment in message, message
    assert "searchrl index" in message  # every refusal says how to get a good index back
    return err.value


def run_cli(capsys, *args) -> tuple[int, str]:
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    _, err = capsys.readouterr()
    return code, err


# --- checksums -------------------------------------------------------------------------------


def test_a_saved_index_records_checksums_and_its_analyzer(index_dir):
    manifest = manifest_of(index_dir)
    assert set(manifest["files"]) >= {f"bm25s/{n}.csc.index.npy" for n in ("data", "indices", "indptr")}
    assert all(len(digest) == 64 for digest in manifest["files"].values())
    assert manifest["params"]["stemmer"] == "english" and manifest["params"]["stopwords"] == "en"
    loaded = load_retriever(index_dir)
    assert loaded.search(["oxygen tank"], k=2)[0][0][0] == "d1"


def test_a_changed_payload_byte_is_refused(index_dir):
    path = index_dir / PAYLOAD / "data.csc.index.npy"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01  # a float's last byte: still a valid array, silently different scores
    path.write_bytes(bytes(raw))
    refused(index_dir, "data.csc.index.npy", "checksum")


def test_an_edited_manifest_is_refused(index_dir):
    manifest = manifest_of(index_dir)
    manifest["doc_ids"] = list(reversed(manifest["doc_ids"]))  # every hit would name the wrong document
    (index_dir / MANIFEST_NAME).write_text(json.dumps(manifest), encoding="utf-8")
    refused(index_dir, "manifest", "checksum")


def test_a_changed_stemmer_in_the_manifest_is_refused(index_dir):
    manifest = manifest_of(index_dir)
    manifest["params"]["stemmer"] = None  # queries would no longer be stemmed like the documents
    (index_dir / MANIFEST_NAME).write_text(json.dumps(manifest), encoding="utf-8")
    refused(index_dir, "checksum")
    reseal(index_dir, params=manifest["params"])  # even with fresh checksums
    refused(index_dir, "stemmer")


def test_a_missing_or_unlisted_payload_file_is_refused(index_dir):
    (index_dir / PAYLOAD / "vocab.index.json").unlink()
    refused(index_dir, "vocab.index.json")
    manifest = manifest_of(index_dir)
    files = [name for name in manifest["files"] if not name.endswith("vocab.index.json")]
    write_manifest(index_dir, "bm25", manifest["params"], manifest["doc_ids"], files)
    refused(index_dir, "vocab.index.json")


def test_an_index_of_the_previous_format_is_refused(index_dir):
    manifest = manifest_of(index_dir)
    old = {key: manifest[key] for key in ("kind", "params", "doc_ids")} | {"version": 1}
    (index_dir / MANIFEST_NAME).write_text(json.dumps(old), encoding="utf-8")
    refused(index_dir, "version 1")


# --- crafted arrays (checksums recomputed) ---------------------------------------------------


def test_document_indices_out_of_range_are_an_error_not_a_crash(index_dir, capsys):
    rewrite_array(index_dir, "indices", lambda a: a + 10_000_000)  # scipy would read far out of bounds
    refused(index_dir, "out of range")
    code, err = run_cli(capsys, "search", "--index", index_dir, "oxygen")
    assert code == 2 and "Traceback" not in err and "out of range" in err


@pytest.mark.parametrize(
    "name, change, fragment",
    [
        ("indices", lambda a: a - 5, "out of range"),
        ("indices", lambda a: a.astype(np.float32), "type"),
        ("indices", lambda a: a[:-1], "entries"),
        ("indptr", lambda a: a[::-1].copy(), "indptr"),
        ("indptr", lambda a: np.concatenate([a[:1], a[2:]]), "indptr"),
        ("indptr", lambda a: a + 1, "indptr"),
        ("indptr", lambda a: a.reshape(1, -1), "one-dimensional"),
        ("data", lambda a: np.where(np.arange(len(a)) == 0, np.nan, a).astype(a.dtype), "finite"),
        ("data", lambda a: np.full_like(a, np.inf), "finite"),
        ("data", lambda a: -a, "negative"),
    ],
    ids=["negative-index", "float-indices", "short-indices", "reversed-indptr", "short-indptr",
         "shifted-indptr", "2d-indptr", "nan-score", "inf-score", "negative-score"],
)
def test_crafted_arrays_are_refused(index_dir, name, change, fragment):
    rewrite_array(index_dir, name, change)
    refused(index_dir, fragment)


def test_a_crafted_vocabulary_is_refused(index_dir):
    path = index_dir / PAYLOAD / "vocab.index.json"
    vocab = json.loads(path.read_text(encoding="utf-8"))
    for bad, fragment in [
        ({**vocab, next(iter(vocab)): len(vocab) + 40}, "vocabulary"),  # a column past the matrix
        ({token: 0 for token in vocab}, "vocabulary"),  # every term on one column
        (list(vocab), "vocabulary"),
    ]:
        path.write_text(json.dumps(bad), encoding="utf-8")
        reseal(index_dir)
        refused(index_dir, fragment)


def test_duplicate_or_miscounted_doc_ids_are_refused(index_dir):
    ids = manifest_of(index_dir)["doc_ids"]
    reseal(index_dir, doc_ids=[ids[0], *ids[:-1]])
    refused(index_dir, "duplicate document id 'd1'")
    reseal(index_dir, doc_ids=ids[:-1])
    refused(index_dir, "4")
    reseal(index_dir, doc_ids=[*ids[:-1], 7])
    refused(index_dir, "doc_ids")


def test_payload_paths_outside_the_index_are_refused(index_dir, tmp_path):
    outside = tmp_path / "elsewhere.npy"
    outside.write_bytes(b"x")
    manifest = manifest_of(index_dir)
    for name in ("../elsewhere.npy", str(outside)):
        write_manifest(index_dir, "bm25", manifest["params"], manifest["doc_ids"], [*manifest["files"], name])
        refused(index_dir, "outside the index")


# --- hybrid and dense ------------------------------------------------------------------------


@pytest.fixture
def hybrid_dir(tmp_path) -> Path:
    directory = tmp_path / "hybrid"
    HybridRetriever([BM25Retriever(), BM25Retriever(stemmer=None)]).index(CORPUS, show_progress=False).save(directory)
    return directory


@pytest.mark.parametrize("member", ["..", ".", "../index", "/tmp", "0-bm25/../..", ""])
def test_hybrid_members_must_be_folders_inside_the_index(hybrid_dir, tmp_path, member):
    BM25Retriever().index(CORPUS, show_progress=False).save(tmp_path / "index")  # a valid index next door
    manifest = manifest_of(hybrid_dir)
    params = {**manifest["params"], "members": ["0-bm25", member]}
    write_manifest(hybrid_dir, "hybrid", params, manifest["doc_ids"], ["0-bm25/retriever.json"])
    refused(hybrid_dir, "member")


def test_a_tampered_hybrid_member_is_refused(hybrid_dir):
    path = hybrid_dir / "1-bm25" / PAYLOAD / "data.csc.index.npy"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))
    refused(hybrid_dir, "checksum")


def test_dense_embeddings_are_checked(tiny_st_dir, tmp_path):
    directory = tmp_path / "dense"
    dense = DenseRetriever(model=tiny_st_dir, cache_dir=False).index(CORPUS, show_progress=False)
    dense.save(directory)
    assert load_retriever(directory).search(["oxygen tank"], k=2) == dense.search(["oxygen tank"], k=2)
    path = directory / "embeddings.npy"
    embeddings = np.load(path)

    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))
    refused(directory, "embeddings.npy", "checksum")

    for bad, fragment in [
        (np.where(np.arange(embeddings.size).reshape(embeddings.shape) == 3, np.nan, embeddings), "finite"),
        (embeddings.astype(np.int64), "type"),
        (embeddings[:2], "4 documents"),
        (embeddings[:, :0], "shape"),
    ]:
        np.save(path, bad, allow_pickle=False)
        reseal(directory)
        refused(directory, fragment)


# --- atomic re-indexing ----------------------------------------------------------------------


def test_reindexing_replaces_the_whole_index(index_dir):
    smaller = BM25Retriever(stemmer=None).index(CORPUS[:2], show_progress=False)
    (index_dir / "stale.txt").write_text("left by the previous index", encoding="utf-8")
    smaller.save(index_dir)
    loaded = load_retriever(index_dir)
    assert loaded.doc_ids == ["d1", "d2"] and loaded.analyzer.stemmer is None
    assert not (index_dir / "stale.txt").exists()
    assert sorted(p.name for p in index_dir.parent.iterdir()) == ["index"]  # no temporary folders left


class Killed(BaseException):
    """Stands in for the process being killed part-way through writing."""


def test_a_reindex_killed_part_way_leaves_the_old_index_intact(index_dir, monkeypatch):
    before = load_retriever(index_dir).search(["oxygen tank", "crew ocean"], k=3)
    real_save = np.save
    calls = []

    def save_then_die(*args, **kwargs):
        calls.append(args[0])
        real_save(*args, **kwargs)
        if len(calls) == 2:  # after some payload files of the new index exist
            raise Killed

    monkeypatch.setattr(np, "save", save_then_die)
    other = [Document("x1", "oxygen tank"), Document("x2", "crew ocean")]
    with pytest.raises(Killed):
        BM25Retriever().index(other, show_progress=False).save(index_dir)
    monkeypatch.undo()
    assert all(index_dir not in Path(p).parents for p in calls)  # the new files went elsewhere
    assert load_retriever(index_dir).search(["oxygen tank", "crew ocean"], k=3) == before
    assert sorted(p.name for p in index_dir.parent.iterdir()) == ["index"]


def test_an_interrupted_swap_names_the_previous_index(index_dir):
    # A kill between moving the old index aside and moving the new one in leaves no index:
    # loading says where the previous one is.
    aside = index_dir.parent / ".index.old-1234"
    os.rename(index_dir, aside)
    with pytest.raises(IndexFileError, match=r"\.index\.old-1234"):
        load_retriever(index_dir)
    BM25Retriever().index(CORPUS, show_progress=False).save(index_dir)  # and a new save recovers
    assert load_retriever(index_dir).doc_ids == [d.id for d in CORPUS]


def test_saving_over_a_file_or_a_folder_of_other_files_is_refused(tmp_path):
    retriever = BM25Retriever().index(CORPUS, show_progress=False)
    target = tmp_path / "afile"
    target.write_text("keep", encoding="utf-8")
    with pytest.raises(ConfigError, match="is a file"):
        retriever.save(target)
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "todo.txt").write_text("keep", encoding="utf-8")
    with pytest.raises(ConfigError, match="not an index"):
        retriever.save(folder)
    assert (folder / "todo.txt").read_text(encoding="utf-8") == "keep" and target.read_text(encoding="utf-8") == "keep"
    shutil.rmtree(folder)
    retriever.save(folder)
    assert load_retriever(folder).doc_ids == [d.id for d in CORPUS]


def test_saving_into_the_current_folder(tmp_path, monkeypatch):
    folder = tmp_path / "here"
    folder.mkdir()
    monkeypatch.chdir(folder)
    BM25Retriever().index(CORPUS, show_progress=False).save(".")
    assert load_retriever(folder).doc_ids == [d.id for d in CORPUS]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here"]
