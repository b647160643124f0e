"""``searchrl index``, ``search`` and ``eval`` on tiny BEIR folders written by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from searchrl.cli import main

CORPUS = [
    {"_id": "d1", "title": "Oxygen tank", "text": "The oxygen tank exploded during the Apollo 13 mission."},
    {"_id": "d2", "title": "Fuel cells", "text": "Fuel cells produced electrical power and drinking water."},
    {"_id": "d3", "title": "Splashdown", "text": "The crew splashed down safely in the Pacific Ocean."},
    {"_id": "d4", "title": "", "text": "Lithium hydroxide canisters removed carbon dioxide from the cabin."},
]
QUERIES = [
    {"_id": "q1", "text": "oxygen tank explosion"},
    {"_id": "q2", "text": "where did the crew land"},
    {"_id": "q3", "text": "zzz unknown words"},  # only an expansion can find d4
    {"_id": "q9", "text": "a query of another split"},
]
QRELS = ["query-id\tcorpus-id\tscore", "q1\td1\t1", "q2\td3\t1", "q2\td2\t0", "q3\td4\t1"]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def beir(tmp_path) -> Path:
    root = tmp_path / "tiny"
    (root / "qrels").mkdir(parents=True)
    write_jsonl(root / "corpus.jsonl", CORPUS)
    write_jsonl(root / "queries.jsonl", QUERIES)
    (root / "qrels" / "test.tsv").write_text("\n".join(QRELS) + "\n", encoding="utf-8")
    (root / "qrels" / "dev.tsv").write_text("q9\td2\t1\n", encoding="utf-8")
    return root


def run_cli(capsys, *args: str | Path) -> tuple[int, str, str]:
    """Run ``searchrl ARGS``; returns (exit code, stdout, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in " ".join(err.split()), err  # rich may wrap long lines


# --- eval --------------------------------------------------------------------------------------


def test_eval_json_prints_exactly_one_object(beir, capsys):
    code, out, err = run_cli(capsys, "eval", "--data", beir, "--split", "test", "--retriever", "bm25", "--json")
    assert code == 0, err
    report = json.loads(out)  # the whole of stdout is one JSON document
    assert out.count("\n") == 1
    assert {"ndcg@10", "recall@100", "mrr@10", "map"} <= set(report)
    assert report["num_queries"] == 3 and report["num_documents"] == 4
    assert report["retriever"] == "bm25" and report["split"] == "test"
    # q1 and q2 are found at rank 1; q3 matches nothing (its only relevant document shares no word).
    assert report["mrr@10"] == pytest.approx(2 / 3)
    assert report["recall@100"] == pytest.approx(2 / 3)


def test_eval_prints_a_table_and_per_query_scores(beir, tmp_path, capsys):
    per_query = tmp_path / "out" / "per-query.jsonl"
    code, out, err = run_cli(capsys, "eval", "--data", beir, "--split", "test", "--per-query", per_query)
    assert code == 0, err
    for label in ("ndcg@10", "recall@100", "mrr@10", "map", "queries", "documents"):
        assert label in out
    rows = [json.loads(line) for line in per_query.read_text().splitlines()]
    assert [row["query_id"] for row in rows] == ["q1", "q2", "q3"]
    assert rows[0]["ndcg@10"] == 1.0 and rows[2] == {"query_id": "q3", "ndcg@10": 0.0, "recall@100": 0.0,
                                                       "mrr@10": 0.0, "map": 0.0}


def test_query_and_document_expansions_are_used(beir, tmp_path, capsys):
    query_expansions = write_jsonl(tmp_path / "q.jsonl", [{"id": "q3", "expansion": "carbon dioxide canisters"}])
    code, out, _ = run_cli(
        capsys, "eval", "--data", beir, "--split", "test", "--json", "--query-expansions", query_expansions
    )
    assert code == 0 and json.loads(out)["mrr@10"] == pytest.approx(1.0)

    doc_expansions = write_jsonl(tmp_path / "d.jsonl", [{"id": "d4", "expansion": "zzz", "model": "m"}])
    code, out, err = run_cli(
        capsys, "eval", "--data", beir, "--split", "test", "--json", "--doc-expansions", doc_expansions
    )
    assert code == 0 and json.loads(out)["mrr@10"] == pytest.approx(1.0)
    assert "3 of 4 documents have no expansion" in " ".join(err.split())  # partial coverage is reported


def test_query_repeat_weights_the_query_against_its_expansion(beir, tmp_path, capsys):
    # An expansion pointing at the wrong document outranks a query held once, not one held three times.
    wrong = write_jsonl(tmp_path / "q.jsonl", [{"id": "q1", "expansion": "fuel cells electrical power drinking water"}])
    reciprocal_rank = {}
    for repeat in ("1", "3"):
        code, out, err = run_cli(
            capsys, "eval", "--data", beir, "--split", "test", "--json", "--per-query", tmp_path / f"pq{repeat}.jsonl",
            "--query-expansions", wrong, "--query-repeat", repeat,
        )
        assert code == 0, err
        rows = [json.loads(line) for line in (tmp_path / f"pq{repeat}.jsonl").read_text().splitlines()]
        reciprocal_rank[repeat] = next(row["mrr@10"] for row in rows if row["query_id"] == "q1")
    assert reciprocal_rank == {"1": 0.5, "3": 1.0}
    code, _, err = run_cli(capsys, "eval", "--data", beir, "--split", "test", "--query-repeat", "0")
    assert code == 2 and "Traceback" not in err


def test_eval_forwards_retriever_options(beir, capsys, monkeypatch):
    from searchrl.cli import retrieval as cli_retrieval
    from searchrl.retrieval import BM25Retriever

    calls = []

    def spy(kind, model, options):
        calls.append((kind.value, model, options))
        return BM25Retriever(k1=options.get("k1", 1.2), b=options.get("b", 0.75))

    monkeypatch.setattr(cli_retrieval, "_build_retriever", spy)
    args = ["eval", "--data", beir, "--split", "test", "--json", "--k1", "0.9", "--b", "0.4"]
    assert run_cli(capsys, *args, "--retriever", "bm25")[0] == 0
    assert run_cli(capsys, *args, "-r", "dense", "--encoder", "enc", "--query-prefix", "query: ",
                   "--passage-prefix", "passage: ")[0] == 0
    assert run_cli(capsys, *args, "-r", "hybrid")[0] == 0
    code, _, err = run_cli(capsys, *args, "-r", "dense", "--model", "enc")
    assert_user_error(code, err, "--model is now --encoder")
    assert calls == [
        ("bm25", None, {"k1": 0.9, "b": 0.4}),
        ("dense", "enc", {"query_prefix": "query: ", "passage_prefix": "passage: "}),
        ("hybrid", None, {"k1": 0.9, "b": 0.4, "query_prefix": "", "passage_prefix": ""}),
    ]


def test_eval_with_a_tiny_dense_encoder(beir, tmp_path, capsys, monkeypatch, tiny_st_dir):
    monkeypatch.setenv("SEARCHRL_CACHE", str(tmp_path / "cache"))
    code, out, err = run_cli(
        capsys, "eval", "--data", beir, "--split", "test", "-r", "hybrid", "--encoder", tiny_st_dir, "--json"
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["retriever"] == "hybrid" and report["num_queries"] == 3
    assert 0.0 <= report["ndcg@10"] <= 1.0


# --- index and search -------------------------------------------------------------------------


def test_index_then_search_and_eval_from_the_saved_index(beir, tmp_path, capsys):
    index_dir = tmp_path / "index"
    code, _, err = run_cli(capsys, "index", "--data", beir, "--retriever", "bm25", "--out", index_dir)
    assert code == 0, err
    assert (index_dir / "retriever.json").is_file()

    code, out, _ = run_cli(capsys, "search", "--index", index_dir, "-k", "2", "--json", "oxygen", "tank", "crew")
    result = json.loads(out)
    assert code == 0 and result["query"] == "oxygen tank crew"
    assert [(hit["rank"], hit["id"]) for hit in result["results"]] == [(1, "d1"), (2, "d3")]
    assert result["results"][0]["id"] == "d1" and result["results"][0]["text"] is None  # no corpus given

    code, out, _ = run_cli(capsys, "search", "--index", index_dir, "--data", beir, "oxygen tank")
    assert code == 0 and "d1" in out and "Oxygen tank" in out and "exploded" in out

    code, out, _ = run_cli(capsys, "eval", "--data", beir, "--split", "test", "--index", index_dir, "--json")
    reused = json.loads(out)
    code, out, _ = run_cli(capsys, "eval", "--data", beir, "--split", "test", "--json")
    fresh = json.loads(out)
    assert code == 0 and reused["index"] == str(index_dir)
    assert {k: reused[k] for k in ("ndcg@10", "map")} == {k: fresh[k] for k in ("ndcg@10", "map")}


def test_index_json_prints_exactly_one_object(beir, tmp_path, capsys):
    index_dir = tmp_path / "index"
    code, out, err = run_cli(capsys, "index", "--data", beir, "--out", index_dir, "--json")
    assert code == 0, err
    report = json.loads(out)  # the whole of stdout is one JSON document
    assert out.count("\n") == 1
    assert report["index"] == str(index_dir) and report["retriever"] == "bm25" and report["data"] == str(beir)
    assert report["num_documents"] == len(CORPUS)
    assert report["doc_expansions"] is None and report["num_expanded_documents"] is None
    assert isinstance(report["seconds"], float) and report["seconds"] >= 0
    assert (index_dir / "retriever.json").is_file()
    assert "indexed 4 documents with bm25" in " ".join(err.split())  # the summary line stays on stderr

    doc_expansions = write_jsonl(tmp_path / "d.jsonl", [{"id": "d4", "expansion": "zzz"},
                                                        {"id": "d1", "expansion": "liquid oxygen"}])
    code, out, err = run_cli(capsys, "index", "--data", beir, "--out", tmp_path / "expanded",
                             "--doc-expansions", doc_expansions, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert out.count("\n") == 1
    assert report["num_documents"] == 4 and report["num_expanded_documents"] == 2
    assert report["doc_expansions"] == str(doc_expansions)
    assert "2 of 4 documents have no expansion" in " ".join(err.split())  # warnings go to stderr, not stdout


def test_index_json_keeps_library_output_off_stdout(beir, tmp_path, capsys, monkeypatch):
    from searchrl.cli import retrieval as cli_retrieval
    from searchrl.retrieval import BM25Retriever

    class Chatty(BM25Retriever):
        def index(self, *args, **kwargs):
            print("a library talking on stdout")
            return super().index(*args, **kwargs)

    monkeypatch.setattr(cli_retrieval, "_build_retriever", lambda kind, model, options: Chatty(**options))
    code, out, err = run_cli(capsys, "index", "--data", beir, "--out", tmp_path / "index", "--json")
    assert code == 0, err
    assert json.loads(out)["num_documents"] == 4
    assert "a library talking on stdout" in err


def test_index_without_json_prints_nothing_on_stdout(beir, tmp_path, capsys):
    code, out, err = run_cli(capsys, "index", "--data", beir, "--out", tmp_path / "index")
    assert code == 0, err
    assert out == ""
    assert "indexed 4 documents with bm25 in" in " ".join(err.split())


def test_index_text_files_and_search_them(tmp_path, capsys):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "report.md").write_text("# Report\n\nThe oxygen tank failed.\n\nThe crew survived.", encoding="utf-8")
    index_dir = tmp_path / "index"
    code, _, err = run_cli(capsys, "index", "--data", notes, "--out", index_dir, "--chunk-size", "30",
                           "--chunk-overlap", "0")
    assert code == 0, err
    code, out, err = run_cli(capsys, "search", "--index", index_dir, "--data", notes, "--json", "--chunk-size", "30",
                             "--chunk-overlap", "0", "crew")
    hits = json.loads(out)["results"]
    assert code == 0 and err == ""
    assert hits[0]["id"] == "report-2" and hits[0]["text"] == "failed.\n\nThe crew survived."
    # Chunked differently from the index: the snippets would be wrong, and the user is told.
    code, out, err = run_cli(capsys, "search", "--index", index_dir, "--data", notes, "crew")
    assert code == 0 and "snippets may not match the results" in " ".join(err.split())


def test_eval_refuses_an_index_of_another_corpus(beir, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    write_jsonl(other / "corpus.jsonl", CORPUS[:2])
    run_cli(capsys, "index", "--data", other, "--out", tmp_path / "index")
    code, _, err = run_cli(capsys, "eval", "--data", beir, "--split", "test", "--index", tmp_path / "index")
    assert_user_error(code, err, "the index holds 2 documents but the corpus has 4")


# --- errors: one line on stderr, exit code 2, no traceback ---------------------------------------


def test_malformed_corpus_line(beir, capsys):
    with (beir / "corpus.jsonl").open("a", encoding="utf-8") as handle:
        handle.write('{"_id": "d5", "text": "unterminated\n')
    code, out, err = run_cli(capsys, "eval", "--data", beir, "--split", "test", "--json")
    assert out == ""
    assert_user_error(code, err, "corpus.jsonl:5: malformed JSON")


def test_missing_split_lists_the_available_ones(beir, capsys):
    code, _, err = run_cli(capsys, "eval", "--data", beir, "--split", "train")
    assert_user_error(code, err, "no qrels for split 'train'", "available splits: dev, test")


def test_qrels_errors_reach_the_user(beir, capsys):
    (beir / "qrels" / "test.tsv").write_text("q1\td1\tyes\n", encoding="utf-8")
    code, _, err = run_cli(capsys, "eval", "--data", beir, "--split", "test")
    assert_user_error(code, err, "test.tsv:1: relevance must be an integer, found 'yes'")
    (beir / "qrels" / "test.tsv").write_text("q1\tnope\t1\n", encoding="utf-8")
    code, _, err = run_cli(capsys, "eval", "--data", beir, "--split", "test")
    assert_user_error(code, err, "test.tsv:1: unknown document id 'nope'")


def test_bad_expansion_files(beir, tmp_path, capsys):
    duplicate = write_jsonl(tmp_path / "dup.jsonl", [{"id": "q1", "expansion": "a"}, {"id": "q1", "expansion": "b"}])
    code, _, err = run_cli(capsys, "eval", "--data", beir, "--split", "test", "--query-expansions", duplicate)
    assert_user_error(code, err, "dup.jsonl:2: duplicate id 'q1'")
    documents_only = write_jsonl(tmp_path / "docs.jsonl", [{"id": "d1", "expansion": "a"}])
    code, _, err = run_cli(capsys, "eval", "--data", beir, "--split", "test", "--query-expansions", documents_only)
    assert_user_error(code, err, "none of the 3 test queries has an expansion here")


def test_missing_data_folder_and_index(tmp_path, capsys):
    code, _, err = run_cli(capsys, "eval", "--data", tmp_path / "nowhere", "--split", "test")
    assert_user_error(code, err, "nowhere: data directory not found")
    code, _, err = run_cli(capsys, "search", "--index", tmp_path / "no-index", "query")
    assert_user_error(code, err, "index directory not found")
    code, _, err = run_cli(capsys, "index", "--data", tmp_path / "nowhere", "--out", tmp_path / "i")
    assert_user_error(code, err, "nowhere: not found")


def test_unknown_measure_and_bad_chunking(beir, tmp_path, capsys):
    code, _, err = run_cli(capsys, "eval", "--data", beir, "--split", "test", "--measures", "ndcg@10,bleu")
    assert_user_error(code, err, "unknown measure 'bleu'")
    (tmp_path / "a.txt").write_text("some text", encoding="utf-8")
    code, _, err = run_cli(capsys, "index", "--data", tmp_path / "a.txt", "--out", tmp_path / "i",
                           "--chunk-size", "10", "--chunk-overlap", "10")
    assert_user_error(code, err, "chunk overlap must be at least 0 and smaller than the chunk size (10)")


def test_error_text_with_brackets_is_printed_as_is(tmp_path, capsys):
    # rich would read "[v2]" as markup and drop it; messages are paths and hints, not markup
    missing = tmp_path / "corpus[v2]"
    code, _, err = run_cli(capsys, "eval", "--data", missing, "--split", "dev")
    assert code == 2 and "corpus[v2]" in err
