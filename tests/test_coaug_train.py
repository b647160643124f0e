"""Co-augmentation GRPO training on CPU with the tiny model and a tiny BEIR folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from transformers import TrainerCallback

from coaug_oracle import role_scaled_advantages
from searchrl.coaug.config import CoAugConfig
from searchrl.coaug.quickstart import quickstart_config
from searchrl.coaug.train import prepare_coaug, train_coaug
from searchrl.data.download import derive_dev_split, download_beir_dataset
from searchrl.errors import ConfigError, DataError
from searchrl.training import train_with_resume

REPO = Path(__file__).resolve().parents[1]

TOPICS = ["vitamin bone fracture", "heart attack aspirin", "protein folding cells", "oxygen tank explosion",
          "virus infection immune", "brain neuron memory", "cancer tumour growth", "diabetes insulin sugar"]


def write_tiny_beir(directory: Path, *, with_dev: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    docs = []
    for t, topic in enumerate(TOPICS):
        for j in range(2):
            docs.append({"_id": f"d{t}-{j}", "title": f"Study {t}.{j}", "text": f"{topic} evidence report {j}"})
    for n in range(16):
        # The first four share a word with every query: the non-relevant documents BM25 ranks
        # above zero, i.e. the hard negatives and background documents.
        extra = " no matter" if n < 4 else ""
        docs.append({"_id": f"n{n}", "title": "", "text": f"unrelated filler words about subject {n} weather{extra}"})
    (directory / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    queries = [{"_id": f"q{t}", "text": f"does {topic.split()[0]} matter"} for t, topic in enumerate(TOPICS)]
    (directory / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (directory / "qrels").mkdir(exist_ok=True)
    header = "query-id\tcorpus-id\tscore\n"
    train_ids = range(0, 6) if with_dev else range(0, 8)
    train = "".join(f"q{t}\td{t}-{j}\t1\n" for t in train_ids for j in range(2))
    (directory / "qrels" / "train.tsv").write_text(header + train)
    if with_dev:
        dev = "".join(f"q{t}\td{t}-0\t1\n" for t in range(6, 8))
        (directory / "qrels" / "dev.tsv").write_text(header + dev)
    return directory


@pytest.fixture()
def tiny_beir(tmp_path) -> Path:
    return write_tiny_beir(tmp_path / "beir")


def tiny_config(model: Path, data: Path, out: Path, **changes) -> CoAugConfig:
    raw = {
        "model": str(model),
        "data": str(data),
        "mode": "coaug",
        "batch": {"queries_per_step": 2, "group_size": 3, "relevant_per_query": 1},
        "reward": {"rounds": 8},
        "grpo": {"steps": 3, "learning_rate": 1e-3, "num_generations": 2, "micro_batch_size": 6, "save_steps": 1},
        "generation": {"max_new_tokens": 8},
        "lora": {"r": 4, "alpha": 8},
        "eval": {"every": 2, "max_queries": 2, "candidate_docs": 8, "candidate_depth": 2, "batch_size": 8},
        "device": "cpu",
        "output_dir": str(out),
    }
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return CoAugConfig.model_validate(raw)


class KillAfterCheckpoint(TrainerCallback):
    """Simulates a kill right after the checkpoint of ``step`` is written."""

    class Killed(Exception):
        pass

    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise self.Killed()


def test_training_kill_and_resume_continues_from_checkpoint(tiny_lm_dir, tiny_beir, tmp_path):
    config = tiny_config(tiny_lm_dir, tiny_beir, tmp_path / "run")
    with pytest.raises(KillAfterCheckpoint.Killed):
        train_coaug(config, callbacks=[KillAfterCheckpoint(1)])
    run_dir = tmp_path / "run"
    assert (run_dir / "checkpoints" / "checkpoint-1" / "trainer_state.json").exists()
    assert not (run_dir / "checkpoints" / "checkpoint-2").exists()

    setup = prepare_coaug(config)
    assert setup.run.resumed
    seen_steps = []
    original = setup.reward.__call__

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        seen_steps.append(setup.reward.last.step)
        return out

    setup.trainer.reward_funcs[0] = type("R", (), {"__call__": staticmethod(recording), "__name__": "coaug_ndcg"})()
    resumed_from = train_with_resume(setup.trainer, setup.run)
    assert resumed_from.name == "checkpoint-1"
    assert seen_steps == [1, 2]  # steps 0 is not regenerated: the data position was restored
    assert setup.trainer.state.global_step == 3
    train_steps = sorted({r["step"] for r in setup.run.read_metrics() if "train/loss" in r})
    assert train_steps == [1, 2, 3]
    # dev evaluated at 0 (untrained), 2 (every) and 3 (end); best kept as a loadable adapter folder
    dev_steps = [r["step"] for r in setup.run.read_metrics() if "dev/ndcg@10" in r]
    assert dev_steps == [0, 2, 3]
    best = json.loads((run_dir / "best.json").read_text())
    assert best["metric"] == "ndcg@10" and best["step"] in (0, 2, 3)
    assert (run_dir / "best" / "adapter_config.json").exists()
    assert json.loads((run_dir / "baseline.json").read_text())["ndcg@10"] >= 0.0


def test_reward_sees_whole_step_and_advantages_are_role_scaled_std_free(tiny_lm_dir, tiny_beir, tmp_path):
    config = tiny_config(tiny_lm_dir, tiny_beir, tmp_path / "run", grpo__steps=2, eval__at_start=False,
                         eval__every=100, batch__group_size=4, batch__hard_negatives=1, grpo__micro_batch_size=8)
    setup = prepare_coaug(config)
    trainer = setup.trainer
    captured = []
    original = trainer._generate_and_score_completions

    def capture(inputs):
        out = original(inputs)
        captured.append((setup.reward.last, out["advantages"].detach().cpu().numpy()))
        return out

    trainer._generate_and_score_completions = capture
    train_with_resume(trainer, setup.run)
    assert [call.step for call, _ in captured] == [0, 1]
    assert "hard_negative" in captured[0][0].prompt_kinds
    for call, advantages in captured:
        batch = setup.builder.build(call.step)
        # every expanded prompt of the step, G times, in one call
        assert len(call.prompt_of_completion) == len(batch.prompts) * 2 == config.prompts_per_step() * 2
        assert np.array_equal(np.bincount(call.prompt_of_completion), np.full(len(batch.prompts), 2))
        expected = role_scaled_advantages(call.raw_rewards, call.prompt_of_completion, call.prompt_kinds)
        np.testing.assert_allclose(advantages, expected, atol=1e-6)
        kinds = np.array(call.prompt_kinds)[call.prompt_of_completion]
        scale = np.where(kinds == "query", 1.0, np.where(kinds == "relevant", 0.2, 0.1))
        np.testing.assert_allclose(
            np.nan_to_num(call.scaled_rewards), np.nan_to_num(call.raw_rewards * scale), atol=1e-12
        )
    assert any(np.abs(adv).max() > 0 for _, adv in captured) or all(
        np.nanstd(call.raw_rewards) == 0 for call, _ in captured
    )


def test_reward_refuses_a_partial_or_mixed_step(tiny_lm_dir, tiny_beir, tmp_path):
    config = tiny_config(tiny_lm_dir, tiny_beir, tmp_path / "run", grpo__steps=1)
    setup = prepare_coaug(config)
    prompts = setup.builder.build(0).prompts
    columns = {
        "step": [0, 0],
        "prompt_index": [0, 0],
        "item_id": [prompts[0].item_id] * 2,
    }
    with pytest.raises(ConfigError, match="exactly"):
        setup.reward(prompts=[None] * 2, completions=["<answer>x</answer>"] * 2, **columns)
    n = len(prompts) * 2
    mixed = {"step": [0] * (n - 1) + [1], "prompt_index": list(np.repeat(range(len(prompts)), 2)),
             "item_id": [p.item_id for p in prompts for _ in range(2)]}
    with pytest.raises(ConfigError, match="mixes"):
        setup.reward(prompts=[None] * n, completions=["x"] * n, **mixed)
    # a full, well-formed step is accepted and returns one reward (or None) per completion
    full = dict(mixed, step=[0] * n)
    rewards = setup.reward(prompts=[None] * n, completions=["<answer>vitamin bone</answer>"] * n, **full)
    assert len(rewards) == n and all(r is None or 0.0 <= r <= 1.0 for r in rewards)


def test_resume_with_different_config_is_refused(tiny_lm_dir, tiny_beir, tmp_path):
    config = tiny_config(tiny_lm_dir, tiny_beir, tmp_path / "run", grpo__steps=1, eval__at_start=False)
    train_coaug(config)
    changed = tiny_config(tiny_lm_dir, tiny_beir, tmp_path / "run", grpo__steps=1, grpo__learning_rate=5e-4,
                          eval__at_start=False)
    with pytest.raises(ConfigError, match="grpo.learning_rate"):
        prepare_coaug(changed)
    # extending the number of steps is allowed and continues the same run
    longer = tiny_config(tiny_lm_dir, tiny_beir, tmp_path / "run", grpo__steps=2, eval__at_start=False)
    setup = prepare_coaug(longer)
    train_with_resume(setup.trainer, setup.run)
    assert setup.trainer.state.global_step == 2


def test_best_adapter_loads_in_the_generation_engine(tiny_lm_dir, tiny_beir, tmp_path, monkeypatch):
    import searchrl.coaug.train as coaug_train

    thresholds = []

    class Recording(coaug_train.DevEvaluationCallback):
        def __init__(self, *args, **kwargs):
            thresholds.append(kwargs.get("min_delta"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(coaug_train, "DevEvaluationCallback", Recording)
    config = tiny_config(tiny_lm_dir, tiny_beir, tmp_path / "run", grpo__steps=1, eval__every=1, eval__min_delta=2.0)
    run_dir = train_coaug(config)
    assert thresholds == [2.0]  # eval.min_delta reaches the selection: no step can beat step 0 by 2
    assert json.loads((run_dir / "best.json").read_text())["step"] == 0
    from searchrl.augment import ExpansionPolicy
    from searchrl.llm.transformers_engine import TransformersEngine

    engine = TransformersEngine(run_dir / "best", device="cpu")
    out = ExpansionPolicy().expand(engine, "query", ["does vitamin matter"])
    assert len(out) == 1 and isinstance(out[0].text, str)
    assert "Co-augmentation training" in (run_dir / "report.md").read_text()


def test_cli_train_coaug(tiny_lm_dir, tiny_beir, tmp_path, capsys, fake_wandb):
    from searchrl.cli import main

    wandb = fake_wandb
    config = tiny_config(tiny_lm_dir, tiny_beir, tmp_path / "unused")
    path = tmp_path / "coaug.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    main(["train", "coaug", "--config", str(path), "--set", "grpo.steps=1", "--set", "eval.at_start=false",
          "--set", "wandb_project=scifact", "--out", str(tmp_path / "cli-run")])
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(tmp_path / "cli-run")
    assert (tmp_path / "cli-run" / "checkpoints" / "checkpoint-1").exists()
    assert wandb.inits[0]["project"] == "scifact"
    assert any("train/loss" in data for _, data in wandb.logged) and wandb.finished == 1
    with pytest.raises(SystemExit) as exit_:
        main(["train", "coaug", "--config", str(path), "--set", "grpo.stepz=1"])
    assert exit_.value.code == 2


def test_config_files_validate_and_quickstart_yaml_matches_code(tmp_path):
    from searchrl.recipes import RECIPES_DIR

    for name in ("coaug-cpu.yaml", "coaug-gpu.yaml", "coaug-quickstart.yaml"):
        raw = yaml.safe_load((RECIPES_DIR / name).read_text())
        CoAugConfig.model_validate(raw)
    quick = yaml.safe_load((RECIPES_DIR / "coaug-quickstart.yaml").read_text())
    code = quickstart_config(quick["data"], quick["output_dir"])
    assert quick == code


def test_derived_dev_split_goes_to_the_run_and_leaves_the_data_folder_untouched(tmp_path):
    folder = write_tiny_beir(tmp_path / "beir", with_dev=False)
    before = {p.name: p.read_bytes() for p in (folder / "qrels").iterdir()}
    out = derive_dev_split(folder, tmp_path / "run" / "qrels", dev_queries=2)
    assert {p.name: p.read_bytes() for p in (folder / "qrels").iterdir()} == before
    from searchrl.data.beir import load_qrels

    dev, train = load_qrels(out / "dev.tsv"), load_qrels(out / "train.tsv")
    full = load_qrels(folder / "qrels" / "train.tsv")
    assert len(dev) == 2 and not set(dev) & set(train) and {**dev, **train} == full
    # a config reads the derived splits from qrels_dir
    config = tiny_config(Path("unused"), folder, tmp_path / "run", qrels_dir=str(out))
    from searchrl.coaug.dataset import load_coaug_data

    data = load_coaug_data(config)
    assert set(data.dev_queries) == set(dev) and set(data.train_qrels) == set(train)
    assert derive_dev_split(write_tiny_beir(tmp_path / "with-dev"), tmp_path / "x") is None
    with pytest.raises(DataError, match="--data"):
        download_beir_dataset("scifact", cache=tmp_path / "cache", url="http://127.0.0.1:9/scifact.zip")


# ----------------------------------------------------------------------------- answer prefill


def trl_tokenize(tokenizer, prompts):
    """Prompt ids exactly as TRL 1.16's GRPOTrainer tokenises a batch of prompts before generating."""
    from types import SimpleNamespace

    from trl import GRPOTrainer

    trainer_like = SimpleNamespace(processing_class=tokenizer, _is_vlm=False, environment_factories=None,
                                   tools=None, chat_template=None, chat_template_kwargs={})
    prompt_ids, _, _ = GRPOTrainer._tokenize_prompts(trainer_like, prompts)
    return [list(ids) for ids in prompt_ids]


def bos_adding_tokenizer():
    """The tiny tokenizer, changed to add a BOS token itself and to write one in its chat template (Llama-style)."""
    from tokenizers.processors import TemplateProcessing

    from searchrl.testing import CHATML_TEMPLATE, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    bos = tokenizer.bos_token
    tokenizer._tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tokenizer.bos_token_id)]
    )
    tokenizer.chat_template = "{{ bos_token }}" + CHATML_TEMPLATE
    assert tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id
    return tokenizer


@pytest.mark.parametrize("think", [False, True])
@pytest.mark.parametrize("adds_bos", [False, True])
def test_training_prompt_tokenises_like_the_generation_engine(tiny_lm_dir, think, adds_bos):
    from transformers import AutoTokenizer

    from searchrl.augment import ExpansionPolicy
    from searchrl.coaug.dataset import render_training_prompt
    from searchrl.llm.transformers_engine import TransformersEngine

    engine = TransformersEngine(str(tiny_lm_dir), device="cpu")
    tokenizer = bos_adding_tokenizer() if adds_bos else AutoTokenizer.from_pretrained(str(tiny_lm_dir))
    engine.tokenizer = tokenizer
    policy = ExpansionPolicy(think=think)
    chats = [policy.prompt("query", "does vitamin d matter"), policy.prompt("document", "Aspirin. Reduces {risk}.")]
    assert chats[0][-1] == {"role": "assistant", "content": "<think>" if think else "<answer>"}
    texts = [render_training_prompt(tokenizer, chat) for chat in chats]
    trainer_ids = trl_tokenize(tokenizer, texts)
    assert trainer_ids == [engine.encode_chat(chat) for chat in chats]
    # The prompt ends inside the opened answer, not with a fresh assistant turn.
    assert tokenizer.decode(trainer_ids[0]).endswith("<|im_start|>assistant\n" + chats[0][-1]["content"])
    # Why rows hold rendered text: TRL renders a chat with add_generation_prompt whatever its last
    # message, which closes the prefill and opens a new turn.
    assert trl_tokenize(tokenizer, chats)[0] != trainer_ids[0]


def test_training_dataset_rows_hold_the_engine_prompt(tiny_lm_dir, tiny_beir, tmp_path):
    config = tiny_config(tiny_lm_dir, tiny_beir, tmp_path / "run", grpo__steps=1, eval__at_start=False)
    setup = prepare_coaug(config)
    rows = setup.trainer.train_dataset
    batch = setup.builder.build(0)
    assert len(rows) == len(batch.prompts)
    from searchrl.llm.transformers_engine import TransformersEngine

    engine = TransformersEngine.from_model(setup.trainer.model, setup.trainer.processing_class)
    policy = config.expansion_policy()
    assert policy.prefill and rows[0]["prompt"].endswith("<answer>")
    for row, item in zip(rows, batch.prompts):
        expected = engine.encode_chat(policy.prompt(item.role, item.text))
        assert trl_tokenize(setup.trainer.processing_class, [row["prompt"]])[0] == expected
    # The reward reads prefill-style completions: text ended by </answer> or by the end of the turn.
    n = len(batch.prompts) * config.grpo.num_generations
    columns = {"step": [0] * n, "prompt_index": [i for i in range(len(batch.prompts)) for _ in range(2)],
               "item_id": [p.item_id for p in batch.prompts for _ in range(2)]}
    setup.reward(prompts=[None] * n, completions=[" vitamin bone</answer>", " vitamin bone"] * (n // 2), **columns)
    assert setup.reward.last.metrics["coaug/format_ok_rate"] == 1.0
    assert setup.reward.last.expansions[:2] == ["vitamin bone", "vitamin bone"]


def test_dev_evaluator_expands_only_the_top_documents_and_says_so(tiny_beir):
    from searchrl.augment import ExpansionPolicy
    from searchrl.coaug.bm25 import CorpusStatistics
    from searchrl.coaug.evaluate import BatchScorer, DevEvaluator, top_documents
    from searchrl.data.beir import load_beir

    data = load_beir(tiny_beir, "dev")
    scorer = BatchScorer("bm25", statistics=CorpusStatistics.from_documents(data.corpus.values()))
    evaluator = DevEvaluator.build(data.corpus, data.queries, data.qrels, scorer, ExpansionPolicy(), mode="coaug",
                                   candidate_docs=None, expand_depth=2)
    assert evaluator.candidate_ids == list(data.corpus)  # the whole corpus is ranked
    assert evaluator.expanded_ids == top_documents(data.corpus, evaluator.queries, scorer, 2)
    assert 2 <= len(evaluator.expanded_ids) <= 2 * len(evaluator.queries)

    class Recorder:
        seen: list[str] = []

        def generate(self, prompts, params):
            self.seen.extend(chat[1]["content"] for chat in prompts)
            return [[" extra words</answer>"] * params.n for _ in prompts]

    from searchrl.llm.engine import GenerationEngine

    engine = type("R", (Recorder, GenerationEngine), {})()
    metrics = evaluator.evaluate_engine(engine)
    documents_prompted = [text for text in engine.seen if "Document:" in text]
    assert len(documents_prompted) == len(evaluator.expanded_ids)
    assert metrics["doc_format_ok_rate"] == metrics["query_format_ok_rate"] == 1.0
    assert metrics["doc_expansion_words"] == 2.0
    line = evaluator.describe(expand_depth=2)
    assert f"{len(evaluator.queries)} dev queries" in line and "whole corpus" in line
    assert f"{len(evaluator.expanded_ids)} documents expanded" in line and "top-2" in line


def test_quickstart_trains_both_sides_with_hard_negatives():
    config = CoAugConfig.model_validate(quickstart_config("data", "out"))
    assert config.mode == "coaug" and config.batch.hard_negatives > 0
    assert config.expansion.prefill and not config.expansion.lenient
    assert config.eval.candidate_docs is None and config.eval.expand_depth is not None


def test_quickstart_printout_says_what_was_evaluated_and_the_format_figures(tmp_path):
    from searchrl.coaug.quickstart import QuickstartSummary, _format_lines

    config = CoAugConfig.model_validate(quickstart_config("data", "out"))
    records = [
        {"step": 0, "dev/ndcg@10": 0.6, "dev/query_format_ok_rate": 1.0, "dev/query_expansion_words": 11.0,
         "dev/doc_format_ok_rate": 0.5, "dev/doc_expansion_words": 12.25},
        {"step": 1, "train/coaug/format_ok_rate": 0.75},
        {"step": 6, "train/coaug/format_ok_rate": 1.0},
    ]
    lines = _format_lines(config, {"query": 64.6, "document": 104.2}, records)
    assert lines[0].startswith("prompts: query ~65 tokens, document ~104 tokens (answer prefill on, strict parsing")
    assert "queries 100% well formed, 11.0 words; documents 50% well formed, 12.2 words" in lines[1]
    assert lines[2] == "  training samples well formed: 75% at step 1, 100% at step 6"
    summary = QuickstartSummary(tmp_path, 0.65, 0.6, 0.62, 6, 600.0, evaluated="50 report queries; whole corpus",
                                selected_on="25 selection queries", formats=lines)
    table = summary.table()
    assert table.startswith("dev nDCG@10 on 50 report queries; whole corpus")
    assert "0.6200  (checkpoint of step 6)" in table and "chosen on 25 selection queries" in table
    assert lines[2] in table and "10.0 min" in table
    untrained_best = QuickstartSummary(tmp_path, 0.65, 0.6, 0.6, None, 60.0, evaluated="e", selected_on="s")
    assert "best/ is the untrained policy" in untrained_best.table()


def test_selection_and_report_queries_are_disjoint_and_saved(tiny_lm_dir, tiny_beir, tmp_path):
    from searchrl.coaug.dataset import DevSelection

    config = tiny_config(tiny_lm_dir, tiny_beir, tmp_path / "run", eval__report_fraction=0.5, grpo__steps=1)
    setup = prepare_coaug(config)
    selection = DevSelection.load(setup.run.path / "selection.json")
    assert selection.select and selection.report and not set(selection.select) & set(selection.report)
    assert set(setup.evaluator.queries) <= set(selection.select)
    assert set(setup.report_evaluator().queries) == set(selection.report)
    with pytest.raises(ConfigError, match="report"):
        DevSelection.split({"q": "t"}, {"q": {"d": 1}}, 0.5)


def test_dense_reward_training_end_to_end(tiny_lm_dir, tiny_st_dir, tiny_beir, tmp_path):
    """retriever: dense scores every query sample against every document sample by cosine."""
    config = tiny_config(tiny_lm_dir, tiny_beir, tmp_path / "run", retriever="dense", encoder=str(tiny_st_dir),
                         grpo__steps=1, eval__every=1)
    setup = prepare_coaug(config)
    assert setup.reward.scorer.retriever == "dense"
    seen = []
    original = setup.reward.scorer.score

    def recording(q_texts, d_texts):
        scores = original(q_texts, d_texts)
        seen.append((list(q_texts), list(d_texts), scores))
        return scores

    setup.reward.scorer.score = recording
    train_with_resume(setup.trainer, setup.run)

    q_texts, d_texts, scores = seen[0]
    dense = setup.reward.scorer.dense
    q = dense.encode_queries(q_texts)
    d = dense.encode_passages(d_texts)
    expected = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (d / np.linalg.norm(d, axis=1, keepdims=True)).T
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    raw = setup.reward.last.raw_rewards
    assert np.all((raw[~np.isnan(raw)] >= 0) & (raw[~np.isnan(raw)] <= 1))
    rows = setup.run.read_metrics()
    assert [r["step"] for r in rows if "dev/ndcg@10" in r] == [0, 1]
    assert any("train/loss" in r for r in rows)


def test_quickstart_end_to_end_reports_on_queries_that_did_not_choose_the_checkpoint(tiny_lm_dir, tmp_path):
    from searchrl.coaug.dataset import DevSelection
    from searchrl.coaug.quickstart import run_quickstart

    data = write_tiny_beir(tmp_path / "beir", with_dev=False)
    before = {p.name: p.read_bytes() for p in (data / "qrels").iterdir()}
    summary = run_quickstart(data=data, out=tmp_path / "run", model=str(tiny_lm_dir), steps=1)
    assert {p.name: p.read_bytes() for p in (data / "qrels").iterdir()} == before  # the data set is untouched
    selection = DevSelection.load(tmp_path / "run" / "selection.json")
    assert selection.report and not set(selection.report) & set(selection.select)
    saved = json.loads((tmp_path / "run" / "quickstart.json").read_text())
    assert {k: saved[k] for k in ("bm25", "untrained", "trained")} == pytest.approx(
        {"bm25": summary.bm25, "untrained": summary.untrained, "trained": summary.trained})
    assert f"{len(selection.report)} report queries" in summary.table()
    if summary.trained_step is None:  # best/ is the untrained policy: the same figure, said so
        assert summary.trained == summary.untrained and "untrained policy" in summary.table()


def test_skip_solved_leaves_out_queries_the_unexpanded_retriever_ranks_perfectly(tiny_lm_dir, tiny_beir, tmp_path):
    from searchrl.coaug.train import _informative_queries
    from searchrl.coaug.dataset import load_coaug_data
    from searchrl.coaug.evaluate import BatchScorer
    from searchrl.coaug.bm25 import CorpusStatistics

    config = tiny_config(tiny_lm_dir, tiny_beir, tmp_path / "run", batch__skip_solved=True, batch__queries_per_step=1)
    data = load_coaug_data(config)
    scorer = BatchScorer("bm25", statistics=CorpusStatistics.from_documents(data.corpus.values()))
    # q0 ("does vitamin matter") finds both of its relevant documents first: solved. Make q1 unsolved
    # by judging a document that shares no word with it.
    data.train_qrels["q1"] = {"n9": 1}
    kept = _informative_queries(config, data, scorer, None)
    assert "q0" not in kept and "q1" in kept
    off = config.model_copy(update={"batch": config.batch.model_copy(update={"skip_solved": False})})
    assert _informative_queries(off, data, scorer, None) == data.train_queries


def test_bm25_settings_have_their_own_section_and_the_old_keys_name_the_new_ones(tiny_beir, tmp_path):
    config = tiny_config(Path("m"), tiny_beir, tmp_path / "run", bm25__k1=0.9, bm25__b=0.4)
    assert (config.bm25.k1, config.bm25.b) == (0.9, 0.4)
    with pytest.raises(ValueError, match=r"reward.bm25_k1 is now bm25.k1"):
        tiny_config(Path("m"), tiny_beir, tmp_path / "run", reward__bm25_k1=0.9)


def test_train_and_quickstart_json_print_one_object(tiny_lm_dir, tiny_beir, tmp_path, capsys, monkeypatch):
    from searchrl.cli import main
    from searchrl.coaug import quickstart as quickstart_module

    config = tiny_config(tiny_lm_dir, tiny_beir, tmp_path / "run", grpo__steps=1, eval__every=1)
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(config.model_dump(mode="json")))
    main(["train", "coaug", "--config", str(path), "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["run_dir"] == str(tmp_path / "run") and printed["steps"] == 1
    assert printed["best"]["metric"] == "ndcg@10" and [r["step"] for r in printed["dev"]] == [0, 1]

    summary = quickstart_module.QuickstartSummary(tmp_path, 0.6, 0.61, 0.62, 3, 12.0, "e", "s")
    monkeypatch.setattr(quickstart_module, "run_quickstart", lambda **kwargs: summary)
    main(["quickstart", "--data", str(tiny_beir), "--json"])
    assert json.loads(capsys.readouterr().out)["trained"] == 0.62
