"""Expansion prompts, completion parsing and the resumable augmentation job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from searchrl.augment import (
    REASONS,
    CorpusAugmentationJob,
    ExpansionPolicy,
    augment_items,
    build_expansion_prompt,
    parse_expansion,
    parse_shard,
    select_shard,
    shard_of,
)
from searchrl.augment.parse import (
    EMPTY_ANSWER,
    MISORDERED_TAGS,
    MISSING_OPEN_TAG,
    MULTIPLE_ANSWERS,
    NO_ANSWER,
    NOT_TEXT,
    OK,
    UNCLOSED_ANSWER,
    UNCLOSED_THINK,
)
from searchrl.data.types import Document, document_text, query_text
from searchrl.errors import ConfigError, DataError, EngineError
from searchrl.llm.engine import GenerationEngine, SamplingParams


class ScriptedEngine(GenerationEngine):
    """Answers each prompt with a completion derived from the text inside it (deterministic).

    ``fail_after`` raises KeyboardInterrupt on that call (0-based), as a Ctrl-C mid-run would;
    ``script`` maps an input text to a fixed model output. Like a real engine it continues a
    final assistant message: the prefilled part of the output is not returned again.
    """

    model_name = "scripted"

    def __init__(self, *, fail_after: int | None = None, script: dict[str, str] | None = None) -> None:
        self.calls = 0
        self.prompts_seen: list[str] = []
        self.fail_after = fail_after
        self.script = script or {}

    @staticmethod
    def input_of(chat) -> str:
        user = next(m["content"] for m in chat if m["role"] == "user")
        label = "Document: " if "Document: " in user else "Query: "
        return user.split(label, 1)[1]

    def generate(self, prompts, params: SamplingParams) -> list[list[str]]:
        if self.fail_after is not None and self.calls == self.fail_after:
            raise KeyboardInterrupt
        self.calls += 1
        out = []
        for chat in prompts:
            text = self.input_of(chat)
            self.prompts_seen.append(text)
            output = self.script.get(text, f"<answer>about {text.lower()}</answer>")
            prefill = chat[-1]["content"] if chat[-1]["role"] == "assistant" else ""
            completion = output[len(prefill):] if output.startswith(prefill) else output
            out.append([completion] * params.n)
        return out


def make_items(count: int) -> dict[str, str]:
    return {f"d{i}": f"Title {i}. Body of document number {i}." for i in range(count)}


# ----------------------------------------------------------------------------- prompts


@pytest.mark.parametrize("role", ["query", "document"])
@pytest.mark.parametrize("style", ["sparse", "dense"])
@pytest.mark.parametrize("think", [False, True])
@pytest.mark.parametrize("prefill", [False, True])
def test_prompts_for_every_role_and_style(role, style, think, prefill):
    chat = build_expansion_prompt(role, style, "Vitamin {D} and\n  bones", think=think, prefill=prefill)
    assert [m["role"] for m in chat] == ["system", "user"] + (["assistant"] if prefill else [])
    user = chat[1]["content"]
    assert user.endswith("Vitamin {D} and bones")  # braces kept, whitespace collapsed, text last
    assert "<answer>" in user and "</answer>" in user
    assert ("<think>" in user) is think
    assert ("key terms" in user) is (style == "sparse")
    assert ("Query:" in user) is (role == "query")
    assert ("Document:" in user) is (role == "document")
    if prefill:
        assert chat[-1]["content"] == ("<think>" if think else "<answer>")


def test_the_four_prompts_differ():
    prompts = {
        (role, kind): build_expansion_prompt(role, kind, "x")[1]["content"]
        for role in ("query", "document")
        for kind in ("sparse", "dense")
    }
    assert len(set(prompts.values())) == 4


def test_unknown_role_or_style_raises_config_error():
    with pytest.raises(ConfigError):
        build_expansion_prompt("passage", "sparse", "x")
    with pytest.raises(ConfigError):
        build_expansion_prompt("query", "colbert", "x")


def test_policy_truncates_long_inputs():
    policy = ExpansionPolicy(max_input_words=3)
    user = policy.prompt("document", "one two three four five")[1]["content"]
    assert user.endswith("Document: one two three") and "four" not in user


# ----------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "completion, reason, strict_text, lenient_text",
    [
        ("<answer>aspirin platelets</answer>", OK, "aspirin platelets", "aspirin platelets"),
        ("<think>let me see</think>\n<answer>\n aspirin\n\n platelets </answer>", OK, "aspirin platelets", "aspirin platelets"),
        ("<ANSWER>aspirin</Answer>", OK, "aspirin", "aspirin"),
        ("<answer>aspirin</answer> trailing chatter", OK, "aspirin", "aspirin"),
        ("<think>maybe <answer>x</answer>?</think><answer>y</answer>", OK, "y", "y"),
        ("reasoning only</think><answer>y</answer>", OK, "y", "y"),
        ("", NO_ANSWER, "", ""),
        ("   ", NO_ANSWER, "", ""),
        ("aspirin platelets", NO_ANSWER, "", "aspirin platelets"),
        ("<think>reasoning</think> aspirin", NO_ANSWER, "", "aspirin"),
        ("<answer>   </answer>", EMPTY_ANSWER, "", ""),
        ("<answer>aspirin platelets", UNCLOSED_ANSWER, "", "aspirin platelets"),
        ("aspirin platelets</answer>", MISSING_OPEN_TAG, "", "aspirin platelets"),
        ("<answer>a</answer><answer>b</answer>", MULTIPLE_ANSWERS, "", "a"),
        ("<answer><answer>a</answer></answer>", MULTIPLE_ANSWERS, "", "a"),
        ("</answer>a<answer>", MISORDERED_TAGS, "", "a"),
        ("<think>still thinking when the budget ran out", UNCLOSED_THINK, "", ""),
        ("<think>x</think><think>unfinished <answer>a</answer>", UNCLOSED_THINK, "", ""),
        ("<answer>a <think>never closed", UNCLOSED_THINK, "", "a"),
    ],
)
def test_parse_expansion_strict_and_lenient(completion, reason, strict_text, lenient_text):
    strict = parse_expansion(completion)
    lenient = parse_expansion(completion, lenient=True)
    assert strict.reason == lenient.reason == reason
    assert strict.text == strict_text
    assert lenient.text == lenient_text
    assert strict.ok == lenient.ok == (reason == OK)
    assert reason in REASONS
    assert lenient.recovered == (reason != OK and bool(lenient_text))


@pytest.mark.parametrize("garbage", [None, 17, b"<answer>x</answer>", ["<answer>x</answer>"]])
def test_parse_expansion_never_raises_on_non_text(garbage):
    parsed = parse_expansion(garbage)  # type: ignore[arg-type]
    assert parsed.text == "" and not parsed.ok and parsed.reason == NOT_TEXT


def test_parse_expansion_caps_words():
    parsed = parse_expansion("<answer>" + " ".join(f"w{i}" for i in range(100)) + "</answer>", max_words=5)
    assert parsed.text == "w0 w1 w2 w3 w4" and parsed.ok and parsed.truncated
    assert not parse_expansion("<answer>a b</answer>", max_words=5).truncated
    assert len(parse_expansion("<answer>" + "x " * 500 + "</answer>", max_words=None).text.split()) == 500


def test_expansion_is_appended_identically_for_training_and_eval():
    parsed = ExpansionPolicy().parse("platelet inhibition</answer>")
    assert query_text("aspirin heart", parsed.text) == "aspirin heart platelet inhibition"
    doc = Document(id="1", title="Aspirin", text="Reduces risk.")
    assert document_text(doc, parsed.text) == "Aspirin Reduces risk. platelet inhibition"
    assert query_text("aspirin heart", parse_expansion("junk").text) == "aspirin heart"


# ----------------------------------------------------------------------------- policy


def test_policy_expand_and_sample_use_the_engine():
    engine = ScriptedEngine(script={"b": "no tags here", "c": "<answer>a</answer><answer>b</answer>"})
    # Without prefill, untagged text is malformed (strict) or salvaged (lenient).
    policy = ExpansionPolicy(prefill=False)
    parsed = policy.expand(engine, "query", ["a", "b"])
    assert [p.text for p in parsed] == ["about a", ""]
    assert [p.reason for p in parsed] == [OK, NO_ANSWER]
    samples = policy.sample(engine, "document", ["a"], n=3)
    assert len(samples) == 1 and len(samples[0]) == 3
    lenient = ExpansionPolicy(prefill=False, lenient=True).expand(engine, "query", ["b"])
    assert lenient[0].text == "no tags here" and not lenient[0].ok
    # With prefill the model is already inside <answer>: text ended by the end of the turn is its answer.
    prefilled = ExpansionPolicy().expand(engine, "query", ["a", "b", "c"])
    assert [p.text for p in prefilled] == ["about a", "no tags here", ""]
    assert [p.reason for p in prefilled] == [OK, OK, MULTIPLE_ANSWERS]


def test_policy_rejects_an_engine_returning_the_wrong_shape():
    class Broken(ScriptedEngine):
        def generate(self, prompts, params):
            return [["<answer>x</answer>"]]

    with pytest.raises(EngineError):
        ExpansionPolicy().expand(Broken(), "query", ["a", "b"])


def test_policy_default_sampling_is_greedy_and_stops_after_answer():
    policy = ExpansionPolicy()
    assert policy.sampling.temperature == 0.0
    assert policy.sampling.stop == ["</answer>"]
    with pytest.raises(Exception):
        ExpansionPolicy(retriever="colbert")


def test_augment_items_batches_and_keeps_ids():
    engine = ScriptedEngine()
    items = make_items(7)
    results = augment_items(engine, ExpansionPolicy(), "document", items, batch_size=3, show_progress=False)
    assert list(results) == list(items)
    assert engine.calls == 3
    assert results["d4"].text == "about title 4. body of document number 4."


# ----------------------------------------------------------------------------- sharding


def test_parse_shard():
    assert parse_shard("0/4") == (0, 4)
    assert parse_shard("3/4") == (3, 4)
    for bad in ("4/4", "-1/4", "1/0", "a/b", "1", "1/2/3"):
        with pytest.raises(ConfigError):
            parse_shard(bad)


def test_shards_cover_every_id_exactly_once():
    ids = [f"doc-{i}" for i in range(1000)]
    shards = [select_shard(ids, (i, 4)) for i in range(4)]
    merged = [item for shard in shards for item in shard]
    assert sorted(merged) == sorted(ids)
    assert len(merged) == len(set(merged))
    assert all(150 < len(shard) < 350 for shard in shards)  # roughly balanced
    # Stable: a shard does not depend on which other ids exist or on their order.
    assert select_shard(list(reversed(ids))[:500], (1, 4)) == [i for i in reversed(ids[500:]) if shard_of(i, 4) == 1]


def test_sharded_jobs_merge_into_the_unsharded_output(tmp_path):
    items = make_items(40)
    full = CorpusAugmentationJob(items, tmp_path / "full", role="document", engine=ScriptedEngine(), batch_size=7)
    full.run(show_progress=False)
    merged: dict[str, dict] = {}
    for index in range(3):
        job = CorpusAugmentationJob(
            items, tmp_path / f"shard{index}", role="document", engine=ScriptedEngine(), shard=(index, 3), batch_size=5
        )
        job.run(show_progress=False)
        for record in read_records(job.expansions_path):
            assert record["id"] not in merged
            merged[record["id"]] = record
    expected = {r["id"]: r for r in read_records(full.expansions_path)}
    assert merged == expected


# ----------------------------------------------------------------------------- the job


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_job_writes_expansions_readable_by_load_expansions_and_a_manifest(tmp_path):
    from searchrl.data.expansions import load_expansions

    items = make_items(10)
    engine = ScriptedEngine(script={items["d3"]: "<answer> </answer>", items["d5"]: "<answer>x</answer><answer>y</answer>"})
    job = CorpusAugmentationJob(
        items, tmp_path, role="document", engine=engine, batch_size=4, model_name="m", engine_name="scripted",
        source={"data": "somewhere"},
    )
    manifest = job.run(show_progress=False)
    expansions = load_expansions(job.expansions_path)
    assert list(expansions) == list(items)
    assert expansions["d0"] == "about title 0. body of document number 0."
    assert expansions["d3"] == expansions["d5"] == ""
    assert engine.calls == 3

    saved = json.loads(job.manifest_path.read_text())
    assert saved == manifest
    assert saved["status"] == "complete" and saved["finished_at"] and saved["started_at"]
    assert saved["settings"]["model"] == "m" and saved["settings"]["engine"] == "scripted"
    assert saved["settings"]["role"] == "document"
    assert "{text}" in saved["settings"]["prompt"][1]["content"]
    assert saved["settings"]["policy"]["sampling"]["temperature"] == 0.0
    assert saved["settings"]["policy"]["prompt_style"] == "sparse"
    assert saved["counts"]["done"] == 10 and saved["counts"]["ok"] == 8
    assert saved["counts"]["malformed"] == 2 and saved["counts"]["empty"] == 2
    assert saved["counts"]["reasons"] == {OK: 8, EMPTY_ANSWER: 1, MULTIPLE_ANSWERS: 1}
    assert saved["settings"]["policy"]["prefill"] is True
    assert saved["settings"]["prompt"][-1] == {"role": "assistant", "content": "<answer>"}
    assert saved["source"] == {"data": "somewhere"}
    records = read_records(job.expansions_path)
    assert records[3]["completion"] == " </answer>" and records[3]["reason"] == EMPTY_ANSWER


def test_job_without_completions_and_with_limit(tmp_path):
    job = CorpusAugmentationJob(make_items(10), tmp_path, role="query", engine=ScriptedEngine(), limit=4, keep_completions=False)
    manifest = job.run(show_progress=False)
    records = read_records(job.expansions_path)
    assert [r["id"] for r in records] == ["d0", "d1", "d2", "d3"]
    assert "completion" not in records[0]
    assert manifest["counts"]["selected"] == 4 and manifest["status"] == "complete"
    # A larger limit later continues the same folder.
    engine = ScriptedEngine()
    CorpusAugmentationJob(make_items(10), tmp_path, role="query", engine=engine, limit=7, keep_completions=False).run(
        show_progress=False
    )
    assert [r["id"] for r in read_records(job.expansions_path)] == [f"d{i}" for i in range(7)]
    assert engine.prompts_seen == [make_items(10)[f"d{i}"] for i in (4, 5, 6)]


def test_job_resumes_after_a_kill_and_a_torn_line_with_identical_output(tmp_path):
    items = make_items(23)
    reference = CorpusAugmentationJob(items, tmp_path / "ref", role="document", engine=ScriptedEngine(), batch_size=4)
    reference.run(show_progress=False)

    out = tmp_path / "run"
    killed = CorpusAugmentationJob(items, out, role="document", engine=ScriptedEngine(fail_after=3), batch_size=4)
    with pytest.raises(KeyboardInterrupt):
        killed.run(show_progress=False)
    manifest = json.loads(killed.manifest_path.read_text())
    assert manifest["status"] == "interrupted" and manifest["counts"]["done"] == 12
    # A kill during the next write leaves half a line behind.
    with open(killed.expansions_path, "ab") as handle:
        handle.write(b'{"id": "d12", "expansion": "half wri')

    engine = ScriptedEngine()
    resumed = CorpusAugmentationJob(items, out, role="document", engine=engine, batch_size=4).run(show_progress=False)
    assert engine.prompts_seen == [items[f"d{i}"] for i in range(12, 23)]  # nothing done twice
    assert killed.expansions_path.read_bytes() == reference.expansions_path.read_bytes()
    assert resumed["status"] == "complete" and resumed["counts"]["done"] == 23
    assert resumed["torn_lines_dropped"] == 1 and len(resumed["resumed_at"]) == 1
    assert resumed["started_at"] == manifest["started_at"]

    # Running a finished job again neither generates nor loads a model.
    def must_not_be_called():
        raise AssertionError("engine built for a finished job")

    again = CorpusAugmentationJob(items, out, role="document", engine=must_not_be_called, model_name="scripted",
                                  engine_name="ScriptedEngine", batch_size=4)
    assert again.run(show_progress=False)["status"] == "complete"
    assert killed.expansions_path.read_bytes() == reference.expansions_path.read_bytes()


def test_job_with_different_settings_is_refused(tmp_path):
    items = make_items(5)
    CorpusAugmentationJob(items, tmp_path, role="document", engine=ScriptedEngine(), limit=2).run(show_progress=False)
    before = (tmp_path / "expansions.jsonl").read_bytes()
    changes = [
        dict(policy=ExpansionPolicy(think=True)),
        dict(policy=ExpansionPolicy(prefill=False)),
        dict(policy=ExpansionPolicy(retriever="dense")),
        dict(policy=ExpansionPolicy(sampling={"temperature": 0.7, "stop": ["</answer>"]})),
        dict(model_name="another-model"),
        dict(role="query"),
        dict(shard=(0, 2)),
    ]
    for change in changes:
        options = dict(role="document", engine=ScriptedEngine()) | change
        with pytest.raises(ConfigError, match="different settings"):
            CorpusAugmentationJob(items, tmp_path, **options).run(show_progress=False)
    changed_items = dict(items, d4="a different text")
    with pytest.raises(ConfigError, match="inputs.sha256"):
        CorpusAugmentationJob(changed_items, tmp_path, role="document", engine=ScriptedEngine()).run(show_progress=False)
    assert (tmp_path / "expansions.jsonl").read_bytes() == before
    # batch size and limit may change
    CorpusAugmentationJob(items, tmp_path, role="document", engine=ScriptedEngine(), batch_size=1).run(show_progress=False)
    assert len(read_records(tmp_path / "expansions.jsonl")) == 5


def test_job_refuses_foreign_or_corrupted_files(tmp_path):
    items = make_items(3)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "expansions.jsonl").write_text('{"id": "d0", "expansion": "x"}\n')
    with pytest.raises(ConfigError, match="without a manifest.json"):
        CorpusAugmentationJob(items, foreign, role="document", engine=ScriptedEngine()).run(show_progress=False)

    out = tmp_path / "out"
    job = CorpusAugmentationJob(items, out, role="document", engine=ScriptedEngine(), limit=1)
    job.run(show_progress=False)
    with open(job.expansions_path, "a") as handle:
        handle.write("not json\n")
    with pytest.raises(DataError) as err:
        CorpusAugmentationJob(items, out, role="document", engine=ScriptedEngine()).run(show_progress=False)
    assert err.value.line == 2

    job.expansions_path.write_text('{"id": "d0", "expansion": "x"}\n{"id": "d0", "expansion": "x"}\n')
    with pytest.raises(DataError, match="written twice"):
        CorpusAugmentationJob(items, out, role="document", engine=ScriptedEngine()).run(show_progress=False)


def test_job_rejects_bad_options(tmp_path):
    with pytest.raises(ConfigError):
        CorpusAugmentationJob({}, tmp_path, role="passage", engine=ScriptedEngine())  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        CorpusAugmentationJob({}, tmp_path, role="query", engine=ScriptedEngine(), batch_size=0)


# ----------------------------------------------------------------------------- CLI


@pytest.fixture
def beir_folder(tmp_path) -> Path:
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{i}", "title": f"T{i}", "text": f"text {i}"} for i in range(6)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    queries = [{"_id": f"q{i}", "text": f"question {i}"} for i in range(4)]
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (folder / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq3\td2\t1\n")
    return folder


@pytest.fixture
def fake_build_engine(monkeypatch):
    built: list[tuple[str, dict]] = []

    def build_engine(kind="transformers", model="", **options):
        built.append((kind, dict(options, model=model)))
        return ScriptedEngine()

    import searchrl.llm as llm
    import searchrl.llm.identity as identity

    monkeypatch.setattr(llm, "build_engine", build_engine)
    # Model names here are placeholders: fingerprint them instead of resolving them.
    monkeypatch.setattr(identity, "model_fingerprint", lambda model: {"base": f"fake:{model}"})
    return built


def run_cli(args: list[str]) -> int:
    from searchrl.cli import main

    try:
        main(args)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def test_cli_augment_corpus_and_queries(beir_folder, tmp_path, fake_build_engine, capsys):
    from searchrl.data.expansions import load_expansions

    out = tmp_path / "docs"
    code = run_cli(["augment", "corpus", "--data", str(beir_folder), "--out", str(out), "--model", "m",
                    "--batch-size", "4", "--max-new-tokens", "48", "--no-progress"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["done"] == 6 and summary["ok"] == 6
    expansions = load_expansions(out / "expansions.jsonl")
    assert expansions["d2"] == "about t2 text 2"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["policy"]["sampling"]["max_new_tokens"] == 48
    assert fake_build_engine[0] == ("transformers", {"batch_size": 4, "model": "m"})

    code = run_cli(["augment", "corpus", "--data", str(beir_folder), "--out", str(out), "--model", "m",
                    "--think", "--no-progress"])
    assert code == 2
    assert "different settings" in capsys.readouterr().err

    queries_out = tmp_path / "queries"
    assert run_cli(["augment", "queries", "--data", str(beir_folder), "--out", str(queries_out), "--model", "m",
                    "--no-progress"]) == 0
    assert list(load_expansions(queries_out / "expansions.jsonl")) == ["q1", "q3"]
    all_out = tmp_path / "all"
    assert run_cli(["augment", "queries", "--data", str(beir_folder), "--split", "all", "--out", str(all_out),
                    "--model", "m", "--shard", "0/1", "--no-progress"]) == 0
    assert len(load_expansions(all_out / "expansions.jsonl")) == 4


def test_cli_reports_bad_shard_and_unknown_ids(beir_folder, tmp_path, fake_build_engine, capsys):
    assert run_cli(["augment", "corpus", "--data", str(beir_folder), "--out", str(tmp_path / "o"), "--model", "m",
                    "--shard", "2/2"]) == 2
    assert "numbered 0 to 1" in capsys.readouterr().err
    ids = tmp_path / "ids.txt"
    ids.write_text("d1\nnope\n")
    assert run_cli(["augment", "corpus", "--data", str(beir_folder), "--out", str(tmp_path / "o"), "--model", "m",
                    "--ids", str(ids)]) == 2
    assert "ids.txt:2" in capsys.readouterr().err


def test_cli_retriever_kind_sets_the_prompt_style(beir_folder, tmp_path, fake_build_engine, capsys):
    def style(*flags):
        out = tmp_path / "-".join(flags).replace("-", "")
        code = run_cli(["augment", "queries", "--data", str(beir_folder), "--out", str(out), "--model", "m",
                        "--no-progress", *flags])
        assert code == 0, capsys.readouterr().err
        return json.loads((out / "manifest.json").read_text())["settings"]["policy"]["prompt_style"]

    assert style() == "sparse"  # --retriever bm25 by default
    assert style("--retriever", "dense") == "dense"
    assert style("--retriever", "hybrid", "--prompt-style", "dense") == "dense"
    capsys.readouterr()
    for flags, message in ((["--retriever", "sparse"], "--retriever sparse is now --retriever bm25"),
                           (["--retriever", "hybrid"], "no default prompt style for retriever 'hybrid'"),
                           (["--prompt-style", "keywords"], "unknown prompt style 'keywords'")):
        assert run_cli(["augment", "queries", "--data", str(beir_folder), "--out", str(tmp_path / "x"),
                        "--model", "m", *flags]) == 2
        assert message in " ".join(capsys.readouterr().err.split())


def test_cli_augment_corpus_reads_every_corpus_format_and_asks_for_format_when_ambiguous(
    tmp_path, fake_build_engine, capsys
):
    from searchrl.data.expansions import load_expansions

    ambiguous = tmp_path / "corpus.jsonl"
    ambiguous.write_text(json.dumps({"id": "a", "contents": "Title\nbody"}) + "\n"
                         + json.dumps({"id": "b", "contents": "one line"}) + "\n")
    assert run_cli(["augment", "corpus", "--data", str(ambiguous), "--out", str(tmp_path / "x"), "--model", "m"]) == 2
    assert "--format flashrag" in " ".join(capsys.readouterr().err.split())
    out = tmp_path / "pyserini"
    assert run_cli(["augment", "corpus", "--data", str(ambiguous), "--format", "pyserini", "--out", str(out),
                    "--model", "m", "--no-progress"]) == 0
    assert set(load_expansions(out / "expansions.jsonl")) == {"a", "b"}
    assert json.loads((out / "manifest.json").read_text())["source"]["format"] == "pyserini"
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.md").write_text("# Tank\nThe oxygen tank exploded.\n")
    assert run_cli(["augment", "corpus", "--data", str(notes), "--out", str(tmp_path / "md"), "--model", "m",
                    "--no-progress"]) == 0
    assert len(load_expansions(tmp_path / "md" / "expansions.jsonl")) == 1


def test_a_policy_stored_under_the_old_field_name_still_loads():
    assert ExpansionPolicy.model_validate({"retriever": "dense"}).prompt_style == "dense"


# ----------------------------------------------------------------------------- a real engine


def test_job_with_the_transformers_engine_on_a_tiny_model(request, tmp_path):
    transformers_engine = pytest.importorskip("searchrl.llm.transformers_engine")
    tiny_lm_dir = request.getfixturevalue("tiny_lm_dir")
    engine = transformers_engine.TransformersEngine(str(tiny_lm_dir), device="cpu", batch_size=4)
    policy = ExpansionPolicy(lenient=True, sampling={"max_new_tokens": 8, "stop": ["</answer>"]})
    job = CorpusAugmentationJob(make_items(5), tmp_path, role="document", policy=policy, engine=engine, batch_size=4)
    manifest = job.run(show_progress=False)
    records = read_records(job.expansions_path)
    assert [r["id"] for r in records] == list(make_items(5))
    assert all(isinstance(r["expansion"], str) and r["reason"] in REASONS for r in records)
    assert manifest["counts"]["done"] == 5


def test_cli_prefill_flag_and_openai_continuation(beir_folder, tmp_path, fake_build_engine, capsys):
    out = tmp_path / "openai"
    assert run_cli(["augment", "queries", "--data", str(beir_folder), "--out", str(out), "--model", "m",
                    "--engine", "openai", "--base-url", "http://localhost:1/v1", "--no-progress"]) == 0
    assert "extra_body" not in fake_build_engine[-1][1]  # the engine itself continues prefilled chats
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["policy"]["prefill"] is True
    plain = tmp_path / "plain"
    assert run_cli(["augment", "queries", "--data", str(beir_folder), "--out", str(plain), "--model", "m",
                    "--engine", "openai", "--base-url", "http://localhost:1/v1", "--no-prefill", "--no-progress"]) == 0
    assert "extra_body" not in fake_build_engine[-1][1]
    assert json.loads((plain / "manifest.json").read_text())["settings"]["prompt"][-1]["role"] == "user"
