"""The field's formats in and out: Pyserini/FlashRAG corpora, TSV topics, TREC qrels and runs,
FlashRAG/Search-R1 QA rows, and ``hf:`` Hub data sets read from an offline ``datasets`` cache."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from searchrl.data.beir import iter_corpus, load_beir, load_corpus, load_qrels, load_queries
from searchrl.data.formats import detect_corpus_format, read_trec_run, split_flashrag_contents, write_trec_run
from searchrl.data.qa import load_qa
from searchrl.errors import DataError
from test_cli_retrieval import CORPUS, QRELS, QUERIES, assert_user_error, run_cli, write_jsonl

# The tiny BEIR data set of test_cli_retrieval in the other tools' formats.
PYSERINI = [{"id": d["_id"], "contents": f"{d['title']} {d['text']}".strip()} for d in CORPUS]
FLASHRAG = [{"id": d["_id"], "contents": f'"{d["title"]}"\n{d["text"]}'} for d in CORPUS]
TOPICS = "".join(f"{q['_id']}\t{q['text']}\n" for q in QUERIES)
TREC_QRELS = "".join(f"{row.split()[0]} 0 {row.split()[1]} {row.split()[2]}\n" for row in QRELS[1:])


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, records: list[dict]) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture
def beir(tmp_path) -> Path:
    root = tmp_path / "beir"
    jsonl(root / "corpus.jsonl", CORPUS)
    jsonl(root / "queries.jsonl", QUERIES)
    write(root / "qrels" / "test.tsv", "\n".join(QRELS) + "\n")
    return root


def eval_json(capsys, *args) -> dict:
    code, out, err = run_cli(capsys, "eval", *args, "--json")
    assert code == 0, err
    return json.loads(out)


# --- corpora ------------------------------------------------------------------------------------


def test_flashrag_contents_split_like_flashrag():
    assert split_flashrag_contents('"Apollo 13"\nThe crew.\nSecond line.') == ("Apollo 13", "The crew.\nSecond line.")
    assert split_flashrag_contents("no title line") == ("no title line", "")


def test_each_corpus_format_is_detected_and_read(tmp_path):
    pyserini = jsonl(tmp_path / "pyserini.jsonl", PYSERINI)
    flashrag = jsonl(tmp_path / "flashrag.jsonl", FLASHRAG)
    beir = jsonl(tmp_path / "beir.jsonl", CORPUS)
    assert [detect_corpus_format(p) for p in (pyserini, flashrag, beir)] == ["pyserini", "flashrag", "beir"]

    docs = load_corpus(flashrag)
    assert docs["d1"].title == "Oxygen tank" and docs["d1"].text.startswith("The oxygen tank exploded")
    assert docs["d4"].title == "" and docs["d4"].text.startswith("Lithium")
    docs = load_corpus(pyserini)
    assert docs["d1"].title == "" and docs["d1"].text == "Oxygen tank The oxygen tank exploded during the Apollo 13 mission."
    # Pyserini records may carry their own title (MS MARCO documents do).
    titled = jsonl(tmp_path / "titled.jsonl", [{"id": "a", "title": "T", "contents": "line one\nline two"}])
    assert detect_corpus_format(titled) == "pyserini" and load_corpus(titled)["a"].title == "T"


def test_a_pyserini_collection_folder_is_one_corpus(tmp_path):
    folder = tmp_path / "collection"
    folder.mkdir()
    jsonl(folder / "docs00.json", PYSERINI[:2])
    with gzip.open(folder / "docs01.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in PYSERINI[2:])
    assert [d.id for d in iter_corpus(folder)] == ["d1", "d2", "d3", "d4"]
    jsonl(folder / "docs02.jsonl", [PYSERINI[0]])
    with pytest.raises(DataError, match="duplicate document id 'd1'"):
        load_corpus(folder)


def test_ambiguous_corpora_are_errors_that_name_the_flag(tmp_path):
    # Line breaks, but no quoted first line: the first line may or may not be a title.
    mixed = jsonl(tmp_path / "c.jsonl", [{"id": "a", "contents": "Title\nbody"}, {"id": "b", "contents": "one line"}])
    with pytest.raises(DataError) as err:
        load_corpus(mixed)
    assert "--format flashrag" in err.value.hint and "--format pyserini" in err.value.hint
    # Named explicitly, either reading is taken as asked.
    assert load_corpus(mixed, format="flashrag")["a"].title == "Title"
    assert load_corpus(mixed, format="pyserini")["a"].text == "Title\nbody"

    both = jsonl(tmp_path / "both.jsonl", [{"id": "a", "contents": "x", "text": "y"}])
    with pytest.raises(DataError, match="both 'contents'.*and 'text'") as err:
        load_corpus(both)
    assert "--format" in err.value.hint
    neither = jsonl(tmp_path / "neither.jsonl", [{"id": "a", "body": "x"}])
    with pytest.raises(DataError, match="no record has a 'text', 'title' or 'contents' field"):
        load_corpus(neither)
    # A format named against the file's records fails on the first line it cannot read.
    with pytest.raises(DataError, match=r"pyserini.jsonl:1: record has 'contents' but no 'text'"):
        load_corpus(jsonl(tmp_path / "pyserini.jsonl", PYSERINI), format="beir")
    with pytest.raises(DataError, match=r"beir.jsonl:1: record has no 'contents' field"):
        load_corpus(jsonl(tmp_path / "beir.jsonl", CORPUS), format="flashrag")


# --- queries and qrels --------------------------------------------------------------------------


def test_tsv_topics_and_trec_qrels(tmp_path):
    topics = write(tmp_path / "topics.tsv", TOPICS)
    assert load_queries(topics) == {q["_id"]: q["text"] for q in QUERIES}
    trec = write(tmp_path / "qrels.txt", TREC_QRELS)
    beir = write(tmp_path / "qrels.tsv", "\n".join(QRELS) + "\n")
    assert load_qrels(trec) == load_qrels(beir) == {"q1": {"d1": 1}, "q2": {"d3": 1, "d2": 0}, "q3": {"d4": 1}}

    with pytest.raises(DataError, match=r"qrels.txt:2: expected 4 columns .* found 3") as err:
        load_qrels(write(tmp_path / "qrels.txt", "q1 0 d1 1\nq2 d3 1\n"))
    assert "TREC" in err.value.hint
    with pytest.raises(DataError, match=r"topics.tsv:2: expected 2 tab-separated columns"):
        load_queries(write(tmp_path / "topics.tsv", "q1\ttext\nq2\ttext\textra\n"))


# --- eval on other tools' files -------------------------------------------------------------------


def test_eval_on_a_pyserini_corpus_with_topics_and_trec_qrels_matches_the_beir_folder(beir, tmp_path, capsys):
    expected = eval_json(capsys, "--data", beir, "--split", "test")
    corpus = jsonl(tmp_path / "corpus.jsonl", FLASHRAG)
    topics = write(tmp_path / "topics.tsv", TOPICS)
    qrels = write(tmp_path / "qrels.trec", TREC_QRELS)
    report = eval_json(capsys, "--data", corpus, "--queries", topics, "--qrels", qrels)
    for measure in ("ndcg@10", "recall@100", "mrr@10", "map", "num_queries", "num_documents"):
        assert report[measure] == expected[measure], measure
    # The BEIR folder's own queries with TREC qrels from elsewhere work as well.
    assert eval_json(capsys, "--data", beir, "--qrels", qrels)["ndcg@10"] == expected["ndcg@10"]

    code, _, err = run_cli(capsys, "eval", "--data", corpus, "--json")
    assert_user_error(code, err, "is a corpus file, not a BEIR folder", "--queries FILE", "--qrels FILE")


def test_eval_refuses_an_ambiguous_corpus_and_accepts_format(tmp_path, capsys):
    corpus = jsonl(tmp_path / "corpus.jsonl", [{"id": "d1", "contents": "Oxygen\ntank exploded"},
                                                     {"id": "d3", "contents": "crew landed in the ocean"}])
    topics = write(tmp_path / "topics.tsv", "q1\toxygen tank\n")
    qrels = write(tmp_path / "qrels.trec", "q1 0 d1 1\n")
    code, _, err = run_cli(capsys, "eval", "--data", corpus, "--queries", topics, "--qrels", qrels)
    assert_user_error(code, err, "cannot tell whether the first line", "--format flashrag", "--format pyserini")
    assert eval_json(capsys, "--data", corpus, "--queries", topics, "--qrels", qrels, "--format", "pyserini")["mrr@10"] == 1.0


def test_index_and_search_a_flashrag_corpus(tmp_path, capsys):
    corpus = jsonl(tmp_path / "wiki.jsonl", FLASHRAG)
    code, _, err = run_cli(capsys, "index", "--data", corpus, "--out", tmp_path / "index")
    assert code == 0, err
    code, out, err = run_cli(capsys, "search", "--index", tmp_path / "index", "--data", corpus, "--json", "oxygen tank")
    assert code == 0, err
    top = json.loads(out)["results"][0]
    assert top["id"] == "d1" and top["title"] == "Oxygen tank"


# --- TREC runs ----------------------------------------------------------------------------------------


def test_trec_run_round_trip_keeps_exact_scores_and_order(tmp_path):
    run = {"q1": {"d2": 0.1 + 0.2, "d1": 3.0, "d3": 0.30000000000000004}, "q2": {"d9": -1.5}}
    path = tmp_path / "run.trec"
    assert write_trec_run(path, run, tag="bm25") == 4
    lines = path.read_text().splitlines()
    assert lines[0] == "q1 Q0 d1 1 3.0 bm25"
    assert [line.split()[2] for line in lines[:3]] == ["d1", "d2", "d3"]  # ties keep the run's order
    assert read_trec_run(path) == run
    with pytest.raises(DataError, match=r"run.trec:1: expected 6 columns"):
        read_trec_run(write(path, "q1 Q0 d1 1 3.0\n"))
    with pytest.raises(DataError, match="cannot be written to a TREC run"):
        write_trec_run(tmp_path / "bad.trec", {"q 1": {"d1": 1.0}})


def test_saved_run_rescored_with_ir_measures_reproduces_eval(beir, tmp_path, capsys):
    import ir_measures

    from searchrl.metrics import to_ir_measure

    # Every query finds something here, so the run file holds every judged query.
    qrels_path = write(tmp_path / "qrels.trec", "q1 0 d1 1\nq2 0 d3 2\nq2 0 d2 0\nq2 0 d1 1\n")
    run_path = tmp_path / "out" / "bm25.trec"
    names = ["ndcg@10", "recall@100", "mrr@10", "map", "p@1"]
    common = ["--data", beir, "--qrels", qrels_path, "--measures", ",".join(names)]
    report = eval_json(capsys, *common, "--save-run", run_path)
    assert report["run"] == str(run_path) and report["num_queries"] == 2
    measures = [to_ir_measure(name) for name in names]
    qrels = list(ir_measures.read_trec_qrels(str(qrels_path)))
    rescored = ir_measures.calc_aggregate(measures, qrels, ir_measures.read_trec_run(str(run_path)))
    for name, measure in zip(names, measures):
        assert rescored[measure] == report[name], name  # to the last digit
    # The printed table shows the same figures.
    code, out, _ = run_cli(capsys, "eval", *common)
    for name, measure in zip(names, measures):
        assert f"{rescored[measure]:.4f}" in out.split(name, 1)[1].splitlines()[0]

    # And `eval --run` scores the file to the same figures.
    scored = eval_json(capsys, "--run", run_path, "--qrels", qrels_path, "--measures", ",".join(names))
    assert {name: scored[name] for name in names} == {name: report[name] for name in names}


def test_eval_run_errors(beir, tmp_path, capsys):
    run_path = write(tmp_path / "run.trec", "x1 Q0 d1 1 1.0 t\n")
    code, _, err = run_cli(capsys, "eval", "--run", run_path, "--qrels", beir / "qrels" / "test.tsv")
    assert_user_error(code, err, "none of the run's 1 queries is judged")
    code, _, err = run_cli(capsys, "eval", "--run", run_path)
    assert_user_error(code, err, "--run needs judgments", "--qrels FILE")
    code, _, err = run_cli(capsys, "eval", "--run", run_path, "--qrels", run_path, "--index", tmp_path)
    assert_user_error(code, err, "--index applies only when retrieving")


def test_save_run_warns_about_queries_without_results(beir, tmp_path, capsys):
    run_path = tmp_path / "run.trec"
    code, _, err = run_cli(capsys, "eval", "--data", beir, "--split", "test", "--save-run", run_path)
    assert code == 0, err
    # q3 shares no word with any document: BM25 returns nothing, and a TREC file cannot say so.
    assert "1 queries have no results" in " ".join(err.split()) and "trec_eval" in err
    assert {line.split()[0] for line in run_path.read_text().splitlines()} == {"q1", "q2"}


# --- QA rows ------------------------------------------------------------------------------------------


def test_flashrag_and_search_r1_qa_rows(tmp_path):
    rows = [{"id": "test_0", "question": "who commanded apollo 13?", "golden_answers": ["Jim Lovell", "Lovell"],
             "metadata": {"source": "nq"}}]
    examples = load_qa(jsonl(tmp_path / "test.jsonl", rows))
    assert examples[0].answers == ("Jim Lovell", "Lovell") and examples[0].id == "test_0"

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": ["train_0", "train_1"], "question": ["q one", "q two"],
                      "golden_answers": [["a"], ["b", "c"]], "data_source": ["nq", "nq"]})
    pq.write_table(table, tmp_path / "train.parquet")
    assert [e.answers for e in load_qa(tmp_path / "train.parquet")] == [("a",), ("b", "c")]

    both = jsonl(tmp_path / "both.jsonl", [{"id": "a", "question": "q", "answers": ["x"], "golden_answers": ["y"]}])
    with pytest.raises(DataError, match="both 'answers' and 'golden_answers'"):
        load_qa(both)
    empty = jsonl(tmp_path / "empty.jsonl", [{"id": "a", "question": "q", "golden_answers": []}])
    with pytest.raises(DataError, match="'golden_answers' is empty"):
        load_qa(empty)


# --- Hub data sets ------------------------------------------------------------------------------------


def build_offline_hub_cache(root: Path, repo: str, *, mteb: bool = False) -> Path:
    """Put ``repo`` (and ``repo-qrels``) in a ``datasets`` cache as a real first download leaves it.

    The same files a BEIR Hub repo holds are loaded from local folders, and the cache folders
    renamed to the Hub names, so that an offline ``load_dataset(repo, "corpus")`` finds them.
    With ``mteb``, the qrels are the repository's own ``default`` configuration, as MTEB keeps them.
    """
    import datasets

    owner, name = repo.split("/")
    cache = root / "datasets-cache"
    source = root / "hub-source" / name
    jsonl(source / "corpus.jsonl", CORPUS)
    jsonl(source / "queries.jsonl", QUERIES)
    qrels = root / "hub-source" / f"{name}-qrels"
    if mteb:  # MTEB keeps qrels as JSONL rows next to the corpus
        keys = ("query-id", "corpus-id", "score")
        jsonl(source / "qrels" / "test.jsonl", [dict(zip(keys, row.split("\t"))) | {"score": int(row.split("\t")[2])}
                                                for row in QRELS[1:]])
        jsonl(source / "qrels" / "train.jsonl", [{"query-id": "q9", "corpus-id": "d2", "score": 1}])
    else:
        write(qrels / "test.tsv", "\n".join(QRELS) + "\n")
        write(qrels / "train.tsv", "query-id\tcorpus-id\tscore\nq9\td2\t1\n")
    default = ("- config_name: default\n  data_files:\n  - split: test\n    path: qrels/test.jsonl\n"
               "  - split: train\n    path: qrels/train.jsonl\n") if mteb else ""
    write(source / "README.md", "---\nconfigs:\n"
          "- config_name: corpus\n  data_files:\n  - split: corpus\n    path: corpus.jsonl\n"
          "- config_name: queries\n  data_files:\n  - split: queries\n    path: queries.jsonl\n" + default + "---\n")
    for config in ("corpus", "queries") + (("default",) if mteb else ()):
        datasets.load_dataset(str(source), config, cache_dir=str(cache))
    if not mteb:
        datasets.load_dataset(str(qrels), cache_dir=str(cache))
    for folder in (name,) if mteb else (name, f"{name}-qrels"):
        shutil.move(cache / folder, cache / f"{owner}___{folder}")
    return cache


def test_hub_data_set_through_an_offline_datasets_cache(beir, tmp_path, capsys, monkeypatch):
    import datasets

    if not datasets.config.HF_HUB_OFFLINE:
        pytest.skip("the test needs HF_HUB_OFFLINE=1 when datasets is imported")
    cache = build_offline_hub_cache(tmp_path, "BeIR/tinyfact")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setenv("SEARCHRL_CACHE", str(tmp_path / "searchrl-cache"))

    expected = eval_json(capsys, "--data", beir, "--split", "test")
    report = eval_json(capsys, "--data", "hf:BeIR/tinyfact", "--split", "test")
    for measure in ("ndcg@10", "recall@100", "mrr@10", "map", "num_queries", "num_documents"):
        assert report[measure] == expected[measure], measure
    folder = tmp_path / "searchrl-cache" / "hub" / "BeIR--tinyfact"
    assert json.loads((folder / "source.json").read_text())["splits"] == {"test": 4, "train": 1}

    # Later runs read the BEIR folder written the first time, without `datasets`.
    shutil.rmtree(cache)
    dataset = load_beir("hf:BeIR/tinyfact", "train")
    assert dataset.queries == {"q9": "a query of another split"}
    code, _, err = run_cli(capsys, "index", "--data", "hf:BeIR/tinyfact", "--out", tmp_path / "index")
    assert code == 0, err

    code, _, err = run_cli(capsys, "eval", "--data", "hf:BeIR/not-cached", "--split", "test")
    assert_user_error(code, err, "cannot load the Hugging Face data set BeIR/not-cached", "--data DIR")
    code, _, err = run_cli(capsys, "eval", "--data", "hf:scifact", "--split", "test")
    assert_user_error(code, err, "not a Hub data set name", "hf:OWNER/NAME")


# --- outputs other tools load ----------------------------------------------------------------------


def test_augment_output_loads_as_a_datasets_table(tmp_path):
    import datasets

    from searchrl.augment import CorpusAugmentationJob, ExpansionPolicy
    from test_augment import ScriptedEngine, make_items

    items = make_items(6)
    # Some outputs are malformed, one is cut to max_words: the lines still share one set of keys.
    script = {items["d1"]: "<answer>x</answer><answer>y</answer>", items["d2"]: "<answer>" + "word " * 40 + "</answer>"}
    job = CorpusAugmentationJob(items, tmp_path / "out", role="document", engine=ScriptedEngine(script=script),
                                policy=ExpansionPolicy(max_words=8), batch_size=4)
    job.run(show_progress=False)
    lines = [json.loads(line) for line in job.expansions_path.read_text().splitlines()]
    assert len({tuple(sorted(r)) for r in lines}) == 1

    expansions = datasets.load_dataset("json", data_files=str(job.expansions_path), split="train",
                                       cache_dir=str(tmp_path / "hf"))
    assert expansions.num_rows == 6 and expansions["id"] == list(items)
    assert {"id", "expansion", "ok", "reason", "truncated", "completion"} <= set(expansions.column_names)
    assert expansions["truncated"] == [False, False, True, False, False, False]
    assert expansions["ok"][1] is False and expansions["expansion"][1] == ""
    manifest = datasets.load_dataset("json", data_files=str(job.manifest_path), split="train", cache_dir=str(tmp_path / "hf"))
    assert manifest.num_rows == 1 and manifest[0]["counts"]["done"] == 6 and manifest[0]["status"] == "complete"


def _schema(heading: str) -> dict:
    """The JSON Schema in the first ```json block after ``heading`` in docs/SCHEMAS.md."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "SCHEMAS.md").read_text(encoding="utf-8")
    section = text.split(heading, 1)[1]
    return json.loads(section.split("```json", 1)[1].split("```", 1)[0])


def test_agent_eval_transcripts_follow_the_documented_schema(tmp_path):
    import typing

    import jsonschema

    from searchrl.agent.episode import FinishReason, ScriptedPolicy
    from searchrl.agent.evaluate import evaluate_agent
    from searchrl.testing import build_tiny_tokenizer
    from searchrl.agent.noise import NoiseConfig
    from searchrl.agent.tool import SearchTool
    from test_agent_episode import CORPUS, Q_BOAT, Q_CMD, Q_TANK, SCRIPTS, WordRetriever, make_tool

    schema = _schema("### `agent eval --out FILE`: transcripts")
    jsonschema.Draft202012Validator.check_schema(schema)
    assert set(schema["properties"]["finish_reason"]["enum"]) == set(typing.get_args(FinishReason))

    out = tmp_path / "transcripts.jsonl"
    policy = ScriptedPolicy(build_tiny_tokenizer(), SCRIPTS)
    evaluate_agent(policy, make_tool(), [Q_CMD, Q_TANK, Q_BOAT], out_path=out, run_info={"model": "scripted"},
                   show_progress=False)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 3 and sum(len(r["searches"]) for r in records) == 3  # searches are covered
    validator = jsonschema.Draft202012Validator(schema)
    for record in records:
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(record)]
        assert not errors, errors
    # A field the document does not describe is caught.
    assert not validator.is_valid({**records[0], "undocumented": 1})

    # Under noise every search fails: the records keep what each query found, and say which first
    # search the noise spoiled (the query had found the gold chunk) and whether the agent searched again.
    noisy = SearchTool(WordRetriever().index(CORPUS.values()), CORPUS, k=2, noise=NoiseConfig(fail_prob=1.0))
    report = evaluate_agent(policy, noisy, [Q_CMD, Q_TANK, Q_BOAT], out_path=tmp_path / "noisy.jsonl",
                            run_info={"model": "scripted"}, show_progress=False)
    records = [json.loads(line) for line in (tmp_path / "noisy.jsonl").read_text().splitlines()]
    for record in records:
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(record)]
        assert not errors, errors
    by_id = {r["question_id"]: r for r in records}
    assert by_id["q1"]["searches"][0]["before_noise"][0] == "c2" and "c2" not in by_id["q1"]["searches"][0]["doc_ids"]
    assert by_id["q1"]["scores"]["first_search_spoiled"] == by_id["q2"]["scores"]["first_search_spoiled"] == 1.0
    assert report.metrics["retry_rate_after_spoiled"] == 0.5  # q2 searched again, q1 did not


def test_hub_data_set_in_mteb_layout(beir, tmp_path, capsys, monkeypatch):
    import datasets

    if not datasets.config.HF_HUB_OFFLINE:
        pytest.skip("the test needs HF_HUB_OFFLINE=1 when datasets is imported")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", build_offline_hub_cache(tmp_path, "mteb/tinyfact", mteb=True))
    monkeypatch.setenv("SEARCHRL_CACHE", str(tmp_path / "searchrl-cache"))
    expected = eval_json(capsys, "--data", beir, "--split", "test")
    assert eval_json(capsys, "--data", "hf:mteb/tinyfact", "--split", "test")["ndcg@10"] == expected["ndcg@10"]
