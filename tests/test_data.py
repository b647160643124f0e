"""Data loaders: BEIR folders, QA JSONL, text chunking, expansions, and their error messages."""

from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path

import pytest

from searchrl.data import (
    Document,
    available_splits,
    chunk_text,
    iter_corpus,
    iter_jsonl,
    load_beir,
    load_corpus,
    load_expansions,
    load_qa,
    load_qrels,
    load_queries,
    load_text_corpus,
    open_text,
    resolve_data_file,
    write_expansions,
)
from searchrl.errors import ConfigError, DataError


def write_lines(path: Path, lines: list[str], *, compress: bool = False) -> Path:
    data = ("\n".join(lines) + "\n").encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def jsonl(records: list[dict]) -> list[str]:
    return [json.dumps(r) for r in records]


def make_beir(root: Path, *, compress: bool = False, header: bool = True) -> Path:
    write_lines(
        root / "corpus.jsonl",
        jsonl(
            [
                {"_id": "d1", "title": "Oxygen", "text": "The oxygen tank exploded.", "metadata": {}},
                {"_id": "d2", "title": "", "text": "Crew returned safely."},
                {"_id": 3, "title": "Numbers", "text": "An integer id."},
            ]
        ),
        compress=compress,
    )
    write_lines(
        root / "queries.jsonl",
        jsonl([{"_id": "q1", "text": "what exploded"}, {"_id": "q2", "text": "crew"}, {"_id": "q3", "text": "other"}]),
        compress=compress,
    )
    rows = ["q1\td1\t1", "q1\td2\t0", "q2\td2\t2"]
    write_lines(root / "qrels" / "test.tsv", (["query-id\tcorpus-id\tscore"] if header else []) + rows, compress=compress)
    write_lines(root / "qrels" / "dev.tsv", ["query-id\tcorpus-id\tscore", "q3\t3\t1"])
    return root


# --- io -----------------------------------------------------------------------------------


def test_open_text_reads_gzip_and_plain_alike(tmp_path):
    plain = write_lines(tmp_path / "a.txt", ["héllo", "world"])
    packed = write_lines(tmp_path / "b.txt", ["héllo", "world"], compress=True)
    with open_text(plain) as p, open_text(packed) as g:
        assert p.read() == g.read() == "héllo\nworld\n"


def test_iter_jsonl_reports_malformed_json_with_line(tmp_path):
    path = write_lines(tmp_path / "x.jsonl", ['{"_id": "a"}', "", '{"_id": "b",}'])
    with pytest.raises(DataError) as err:
        list(iter_jsonl(path))
    assert err.value.line == 3
    assert f"{path}:3: malformed JSON" in str(err.value)


def test_iter_jsonl_rejects_non_object_lines(tmp_path):
    path = write_lines(tmp_path / "x.jsonl", ['{"_id": "a"}', '["not", "an", "object"]'])
    with pytest.raises(DataError, match=r"x.jsonl:2: expected a JSON object, found list"):
        list(iter_jsonl(path))


def test_undecodable_bytes_name_file_and_line(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b'{"_id": "a", "text": "fine"}\n{"_id": "b", "text": "caf\xe9"}\n')
    with pytest.raises(DataError) as err:
        list(iter_corpus(path))
    assert err.value.path == str(path) and err.value.line == 2
    assert "not valid UTF-8" in str(err.value) and "iconv" in str(err.value)


def test_truncated_gzip_is_a_data_error(tmp_path):
    path = tmp_path / "corpus.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"_id": "a", "text": "x"}\n' * 50)[:30])
    with pytest.raises(DataError, match="cannot decompress"):
        list(iter_corpus(path))


def test_resolve_data_file_prefers_plain_then_gz_and_lists_contents(tmp_path):
    write_lines(tmp_path / "corpus.jsonl", ["{}"], compress=True)
    assert resolve_data_file(tmp_path, "corpus.jsonl").name == "corpus.jsonl.gz"
    assert resolve_data_file(tmp_path, "corpus").name == "corpus.jsonl.gz"
    with pytest.raises(DataError, match=r"neither queries.jsonl nor queries.jsonl.gz found.*files present: corpus.jsonl.gz"):
        resolve_data_file(tmp_path, "queries.jsonl")


# --- corpus and queries ---------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_load_beir_reads_plain_and_gzip_folders(tmp_path, compress):
    dataset = load_beir(make_beir(tmp_path, compress=compress), "test")
    assert list(dataset.corpus) == ["d1", "d2", "3"]
    assert dataset.corpus["d1"] == Document(id="d1", title="Oxygen", text="The oxygen tank exploded.")
    assert dataset.queries == {"q1": "what exploded", "q2": "crew"}  # only the split's queries
    assert dataset.qrels == {"q1": {"d1": 1, "d2": 0}, "q2": {"d2": 2}}  # relevance 0 rows kept
    assert dataset.split == "test" and dataset.directory == tmp_path


def test_qrels_header_is_optional(tmp_path):
    root = make_beir(tmp_path, header=False)
    assert load_qrels(root / "qrels" / "test.tsv") == {"q1": {"d1": 1, "d2": 0}, "q2": {"d2": 2}}


def test_qrels_accept_space_separated_columns(tmp_path):
    path = write_lines(tmp_path / "q.tsv", ["query-id corpus-id score", "q1 d1 1"])
    assert load_qrels(path) == {"q1": {"d1": 1}}


def test_iter_corpus_streams_documents_one_at_a_time(tmp_path):
    make_beir(tmp_path)
    documents = iter_corpus(tmp_path)
    assert next(documents).id == "d1"  # a generator: nothing beyond the first line is needed yet
    assert [d.id for d in documents] == ["d2", "3"]


def test_corpus_missing_id(tmp_path):
    path = write_lines(tmp_path / "corpus.jsonl", jsonl([{"_id": "a", "text": "x"}, {"title": "t", "text": "no id"}]))
    with pytest.raises(DataError, match=r"corpus.jsonl:2: record has no '_id' or 'id' field"):
        load_corpus(path)


def test_corpus_duplicate_id(tmp_path):
    path = write_lines(tmp_path / "corpus.jsonl", jsonl([{"_id": "a", "text": "x"}, {"_id": "b"}, {"_id": "a"}]))
    with pytest.raises(DataError, match=r"corpus.jsonl:3: duplicate document id 'a' \(first seen on line 1\)"):
        load_corpus(path)


def test_corpus_text_must_be_a_string(tmp_path):
    path = write_lines(tmp_path / "corpus.jsonl", jsonl([{"_id": "a", "text": ["x"]}]))
    with pytest.raises(DataError, match=r"corpus.jsonl:1: 'text' must be a string, found list"):
        load_corpus(path)


def test_empty_documents_are_kept_and_reported(tmp_path):
    records = [{"_id": "a", "text": "x"}] + [{"_id": f"e{i}", "title": " ", "text": ""} for i in range(7)]
    path = write_lines(tmp_path / "corpus.jsonl", jsonl(records))
    with pytest.warns(UserWarning, match=r"7 empty documents kept .*: e0, e1, e2, e3, e4, \.\.\."):
        corpus = load_corpus(path)
    assert len(corpus) == 8 and corpus["e3"].text == ""


def test_queries_duplicate_and_missing_text(tmp_path):
    path = write_lines(tmp_path / "queries.jsonl", jsonl([{"_id": "q1", "text": "a"}, {"_id": "q1", "text": "b"}]))
    with pytest.raises(DataError, match=r"queries.jsonl:2: duplicate query id 'q1'"):
        load_queries(path)
    path = write_lines(tmp_path / "queries.jsonl", jsonl([{"_id": "q1"}]))
    with pytest.raises(DataError, match=r"queries.jsonl:1: record has no 'text' field"):
        load_queries(path)


# --- qrels ---------------------------------------------------------------------------------


def test_qrels_wrong_column_count(tmp_path):
    path = write_lines(tmp_path / "test.tsv", ["query-id\tcorpus-id\tscore", "q1\td1\t1", "q1\t0\td2\t1"])
    with pytest.raises(DataError) as err:
        load_qrels(path)
    assert err.value.line == 3
    assert "expected 3 columns (query-id, corpus-id, score), found 4" in str(err.value)
    assert "TREC" in err.value.hint


def test_qrels_non_integer_relevance(tmp_path):
    path = write_lines(tmp_path / "test.tsv", ["q1\td1\t1", "q1\td2\thigh"])
    with pytest.raises(DataError, match=r"test.tsv:2: relevance must be an integer, found 'high'"):
        load_qrels(path)


def test_qrels_non_integer_first_line_is_not_mistaken_for_a_header(tmp_path):
    path = write_lines(tmp_path / "test.tsv", ["q1\td1\t0.5"])
    with pytest.raises(DataError, match=r"test.tsv:1: relevance must be an integer, found '0.5'"):
        load_qrels(path)


def test_qrels_unknown_query_and_document(tmp_path):
    path = write_lines(tmp_path / "test.tsv", ["q1\td1\t1", "q9\td1\t1"])
    with pytest.raises(DataError, match=r"test.tsv:2: unknown query id 'q9' \(not in the queries file\)"):
        load_qrels(path, query_ids={"q1"}, doc_ids={"d1"})
    path = write_lines(tmp_path / "test.tsv", ["q1\td1\t1", "q1\tzz\t1"])
    with pytest.raises(DataError, match=r"test.tsv:2: unknown document id 'zz' \(not in the corpus\)"):
        load_qrels(path, query_ids={"q1"}, doc_ids={"d1"})


def test_qrels_conflicting_duplicate_rows(tmp_path):
    path = write_lines(tmp_path / "test.tsv", ["q1\td1\t1", "q1\td1\t1", "q1\td1\t2"])
    with pytest.raises(DataError, match=r"test.tsv:3: query 'q1' judges document 'd1' twice, as 1 and 2"):
        load_qrels(path)


def test_load_beir_checks_qrels_against_corpus_and_queries(tmp_path):
    root = make_beir(tmp_path)
    write_lines(root / "qrels" / "test.tsv", ["query-id\tcorpus-id\tscore", "q1\tmissing-doc\t1"])
    with pytest.raises(DataError, match=r"qrels/test.tsv:2: unknown document id 'missing-doc'"):
        load_beir(root, "test")


def test_missing_split_lists_available_splits(tmp_path):
    root = make_beir(tmp_path)
    assert available_splits(root) == ["dev", "test"]
    with pytest.raises(DataError) as err:
        load_beir(root, "train")
    assert "no qrels for split 'train'" in str(err.value)
    assert err.value.hint == "available splits: dev, test"


def test_missing_corpus_and_missing_folder(tmp_path):
    root = make_beir(tmp_path)
    (root / "corpus.jsonl").unlink()
    with pytest.raises(DataError, match="neither corpus.jsonl nor corpus.jsonl.gz found"):
        load_beir(root, "test")
    with pytest.raises(DataError, match="data directory not found"):
        load_beir(tmp_path / "nope", "test")


# --- QA ------------------------------------------------------------------------------------


def test_load_qa_reads_answers_and_optional_gold_ids(tmp_path):
    path = write_lines(
        tmp_path / "qa.jsonl",
        jsonl(
            [
                {"id": "q0", "question": "When?", "answers": ["1970", "April 1970"], "gold_ids": ["c2"], "extra": 1},
                {"id": 7, "question": " Who? ", "answers": ["Lovell"]},
            ]
        ),
    )
    first, second = load_qa(path)
    assert first.answers == ("1970", "April 1970") and first.gold_ids == ("c2",)
    assert second.id == "7" and second.question == "Who?" and second.gold_ids == ()


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"question": "q", "answers": ["a"]}, "record has no 'id' or '_id' field"),
        ({"id": "x", "answers": ["a"]}, "record has no non-empty 'question' string"),
        ({"id": "x", "question": "q"}, "record has no 'answers' field"),
        ({"id": "x", "question": "q", "answers": "a"}, "'answers' must be a list of strings, found str"),
        ({"id": "x", "question": "q", "answers": []}, "'answers' is empty"),
        ({"id": "x", "question": "q", "answers": [{"a": 1}]}, "'answers'[0] must be a string, found dict"),
        ({"id": "x", "question": "q", "answers": ["a"], "gold_ids": "c1"}, "'gold_ids' must be a list of strings"),
    ],
)
def test_load_qa_errors(tmp_path, record, message):
    path = write_lines(tmp_path / "qa.jsonl", jsonl([{"id": "ok", "question": "q", "answers": ["a"]}, record]))
    with pytest.raises(DataError) as err:
        load_qa(path)
    assert err.value.line == 2 and message in str(err.value)


def test_load_qa_duplicate_id(tmp_path):
    path = write_lines(tmp_path / "qa.jsonl", jsonl([{"id": "a", "question": "q", "answers": ["x"]}] * 2))
    with pytest.raises(DataError, match=r"qa.jsonl:2: duplicate id 'a' \(first seen on line 1\)"):
        load_qa(path)


# --- text chunking ---------------------------------------------------------------------------


def test_chunk_text_respects_size_and_prefers_paragraphs_then_sentences():
    paragraph_a = "First paragraph sentence one. Sentence two here."
    paragraph_b = "Second paragraph is right here. It goes on a while longer than that."
    chunks = chunk_text(paragraph_a + "\n\n" + paragraph_b, size=80, overlap=0)
    assert chunks == [paragraph_a, "Second paragraph is right here. It goes on a while longer than that."]
    chunks = chunk_text("Alpha beta gamma. Delta epsilon zeta eta theta iota kappa.", size=30, overlap=0)
    assert chunks[0] == "Alpha beta gamma."  # the sentence end, not a mid-sentence word break
    assert all(len(c) <= 30 for c in chunks)


def test_chunk_text_overlap_repeats_whole_words_and_covers_everything():
    words = [f"w{i:03d}" for i in range(200)]
    text = " ".join(words)
    chunks = chunk_text(text, size=50, overlap=15)
    assert all(len(c) <= 50 for c in chunks)
    for previous, following in zip(chunks, chunks[1:]):
        shared = following.split()[0]
        assert shared in previous.split(), "the next chunk starts inside the previous one, at a word"
        assert following.split()[0] != previous.split()[0]
    seen = [w for chunk in chunks for w in chunk.split()]
    assert set(seen) == set(words)
    assert " ".join(chunk_text(text, size=50, overlap=0)).split() == words  # no overlap: exact partition


def test_chunk_text_cuts_a_word_longer_than_the_chunk():
    assert chunk_text("x" * 25, size=10, overlap=2) == ["x" * 10, "x" * 10, "x" * 5]


def test_chunk_text_edge_cases():
    assert chunk_text("", size=10, overlap=0) == [] and chunk_text(" \n\n ", size=10, overlap=0) == []
    assert chunk_text("  short  ", size=10, overlap=3) == ["short"]
    with pytest.raises(ConfigError, match=r"chunk overlap must be at least 0 and smaller than the chunk size \(10\)"):
        chunk_text("text", size=10, overlap=10)
    with pytest.raises(ConfigError, match="chunk size must be positive"):
        chunk_text("text", size=0, overlap=0)


def test_load_text_corpus_from_files_and_folders(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "report.md").write_text("# Title\n\n" + "Sentence here. " * 20, encoding="utf-8")
    (tmp_path / "docs" / "notes.txt").write_text("Short note.", encoding="utf-8")
    (tmp_path / "docs" / "image.png").write_bytes(b"\x89PNG")
    documents = load_text_corpus(tmp_path / "docs", size=100, overlap=10)
    ids = [d.id for d in documents]
    assert ids[0] == "notes-1" and ids[1:4] == ["report-1", "report-2", "report-3"]
    assert all(len(d.text) <= 100 for d in documents)
    assert load_text_corpus(tmp_path / "docs" / "notes.txt")[0] == Document(id="notes-1", text="Short note.")


def test_load_text_corpus_errors(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"line one\nline two \xff\n")
    with pytest.raises(DataError, match=r"bad.txt:2: not valid UTF-8"):
        load_text_corpus(bad)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "bad.md").write_text("other", encoding="utf-8")
    bad.write_text("fine", encoding="utf-8")
    with pytest.raises(DataError, match="two files share the name 'bad'"):
        load_text_corpus([bad, tmp_path / "a" / "bad.md"])
    with pytest.raises(DataError, match="file not found"):
        load_text_corpus(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n", encoding="utf-8")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        documents = load_text_corpus([bad, empty])
    assert [d.id for d in documents] == ["bad-1"]
    assert "1 text files without text skipped" in str(caught[0].message)


# --- expansions ------------------------------------------------------------------------------


def test_expansions_round_trip_plain_and_gzip(tmp_path):
    mapping = {"d1": "oxygen tank explosion", "d2": "", "q3": "émigré"}
    for name in ("exp.jsonl", "exp.jsonl.gz"):
        write_expansions(tmp_path / name, mapping)
        assert load_expansions(tmp_path / name) == mapping
    assert not list(tmp_path.glob(".*.tmp")), "the atomic write leaves no temporary file"


def test_expansions_tolerate_extra_keys_and_null(tmp_path):
    path = write_lines(
        tmp_path / "exp.jsonl",
        jsonl([{"id": "a", "expansion": "x", "ok": True, "model": "m"}, {"id": "b", "expansion": None}]),
    )
    assert load_expansions(path) == {"a": "x", "b": ""}


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([{"id": "a", "expansion": "x"}, {"id": "a", "expansion": "y"}], "exp.jsonl:2: duplicate id 'a'"),
        ([{"id": "a", "expansion": "x"}, {"expansion": "y"}], "exp.jsonl:2: record has no 'id' or '_id' field"),
        ([{"id": "a", "expansion": "x"}, {"id": "b", "text": "y"}], "exp.jsonl:2: record has no 'expansion' field"),
        ([{"id": "a", "expansion": 3}], "exp.jsonl:1: 'expansion' must be a string, found int"),
    ],
)
def test_expansions_errors(tmp_path, records, message):
    path = write_lines(tmp_path / "exp.jsonl", jsonl(records))
    with pytest.raises(DataError) as err:
        load_expansions(path)
    assert message in str(err.value)


# --- the real development data ------------------------------------------------------------------


@pytest.mark.slow
def test_real_scifact_and_apollo_load(shared_data):
    dev = load_beir(shared_data / "scifact", "dev")
    assert len(dev.corpus) == 5183 and len(dev.queries) == 100
    assert available_splits(shared_data / "scifact") == ["dev", "train"]
    questions = load_qa(shared_data / "apollo13" / "questions.jsonl")
    assert len(questions) == 270 and all(q.answers and q.gold_ids for q in questions)
