"""Run directories (config check on resume, hashes, metrics, best checkpoint) and the shared GRPO glue."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from types import SimpleNamespace

import pytest
import yaml
from pydantic import BaseModel

from searchrl.errors import ConfigError, DataError
from searchrl.runs import RunDirectory, config_differences, finished_run_of, last_checkpoint, sha256_file
from searchrl.training import (
    DevEvaluationCallback,
    LoraSettings,
    build_grpo_config,
    build_lora_config,
    train_with_resume,
)


class Inner(BaseModel):
    lr: float = 1e-5
    steps: int = 10


class Cfg(BaseModel):
    model: str = "tiny"
    train: Inner = Inner()


def test_create_writes_layout(tmp_path):
    data = tmp_path / "corpus.jsonl"
    data.write_text('{"_id": "d1", "text": "x"}\n')
    run = RunDirectory.create_or_resume(tmp_path / "run", Cfg(), input_files=[data])
    assert not run.resumed
    assert yaml.safe_load(run.config_path.read_text()) == {"model": "tiny", "train": {"lr": 1e-5, "steps": 10}}
    inputs = json.loads((run.path / "inputs.json").read_text())
    assert inputs[str(data.resolve())]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    versions = json.loads((run.path / "environment.json").read_text())["versions"]
    assert versions["searchrl"] and versions["python"] and "trl" in versions
    assert run.checkpoints_dir.is_dir() and run.tb_dir.is_dir()


def test_environment_names_the_machine_that_decides_precision_auto(tmp_path):
    from searchrl.llm.precision import cpu_has_native_bf16

    run = RunDirectory.create_or_resume(tmp_path / "run", Cfg())
    machine = json.loads((run.path / "environment.json").read_text())["machine"]
    assert machine["cpu"] and machine["cpu_count"] == os.cpu_count()
    assert machine["cpu_native_bf16"] is cpu_has_native_bf16() and isinstance(machine["gpus"], list)
    report = run.write_report("run").read_text()
    assert "## Machine" in report and f"| cpu_native_bf16 | {machine['cpu_native_bf16']} |" in report

    # Resumed on another machine: the one it ran on before is kept beside the current one.
    other = {**machine, "cpu": "Another CPU", "cpu_native_bf16": not machine["cpu_native_bf16"]}
    (run.path / "environment.json").write_text(json.dumps({"versions": {}, "machine": other}))
    RunDirectory.create_or_resume(tmp_path / "run", Cfg())
    environment = json.loads((run.path / "environment.json").read_text())
    assert environment["machine"] == machine and environment["earlier_machines"] == [other]
    assert "Resumed from a run on another machine: Another CPU" in run.write_report("run").read_text()
    RunDirectory.create_or_resume(tmp_path / "run", Cfg())  # resumed again on the same machine: nothing added
    assert json.loads((run.path / "environment.json").read_text())["earlier_machines"] == [other]


def test_resume_same_config(tmp_path):
    RunDirectory.create_or_resume(tmp_path / "run", Cfg())
    again = RunDirectory.create_or_resume(tmp_path / "run", Cfg())
    assert again.resumed


def test_resume_with_different_config_is_refused_naming_keys(tmp_path):
    RunDirectory.create_or_resume(tmp_path / "run", Cfg())
    changed = Cfg(model="other", train=Inner(lr=3e-5))
    with pytest.raises(ConfigError) as info:
        RunDirectory.create_or_resume(tmp_path / "run", changed)
    message = str(info.value)
    assert "model" in message and "train.lr" in message and "train.steps" not in message
    # the stored config is untouched by the refused attempt
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"] == "tiny"


def test_a_run_written_before_a_setting_existed_resumes_with_its_default(tmp_path):
    """A key added to the model later takes its default for an old run; a renamed key still blocks."""
    run_dir = tmp_path / "run"
    RunDirectory.create_or_resume(run_dir, Cfg())
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"model": "tiny", "train": {"lr": 1e-5}}))  # no train.steps
    assert RunDirectory.create_or_resume(run_dir, Cfg()).resumed
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"model": "tiny", "train": {"lr": 1e-5}}))
    with pytest.raises(ConfigError, match=r"train\.steps: 10 -> 20"):  # the default, not None, is what it ran with
        RunDirectory.create_or_resume(run_dir, Cfg(train=Inner(steps=20)))
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"model": "tiny", "train": {"lr": 1e-5, "epochs": 3}}))
    with pytest.raises(ConfigError, match=r"train\.epochs: 3 -> None"):
        RunDirectory.create_or_resume(run_dir, Cfg())
    (run_dir / "final").mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"model": "tiny", "train": {"lr": 1e-5}}))
    assert finished_run_of(run_dir, Cfg()) and not finished_run_of(run_dir, Cfg(model="other"))


class Located(BaseModel):
    output_dir: str = "runs/a"
    train: Inner = Inner()


def test_a_moved_or_copied_run_directory_resumes_under_its_new_path(tmp_path):
    import shutil

    RunDirectory.create_or_resume(tmp_path / "a", Located(output_dir=str(tmp_path / "a")))
    (tmp_path / "a" / "final").mkdir()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    moved = Located(output_dir=str(tmp_path / "b"))
    assert finished_run_of(tmp_path / "b", moved)
    assert not finished_run_of(tmp_path / "b", Located(output_dir=str(tmp_path / "b"), train=Inner(lr=1.0)))
    run = RunDirectory.create_or_resume(tmp_path / "b", moved)
    assert run.resumed and run.config()["output_dir"] == str(tmp_path / "b")
    with pytest.raises(ConfigError, match=r"train\.lr") as info:  # the location never hides a real difference
        RunDirectory.create_or_resume(tmp_path / "a", Located(output_dir=str(tmp_path / "c"), train=Inner(lr=1.0)))
    assert "output_dir" not in str(info.value)


def test_force_and_mutable_keys(tmp_path):
    RunDirectory.create_or_resume(tmp_path / "run", Cfg())
    # extending training is allowed when the key is declared mutable
    run = RunDirectory.create_or_resume(tmp_path / "run", Cfg(train=Inner(steps=20)), mutable_keys=["train.steps"])
    assert run.resumed and run.config()["train"]["steps"] == 20
    history = (tmp_path / "run" / "config-history.jsonl").read_text().splitlines()
    assert json.loads(history[-1])["changed"] == {"train.steps": [10, 20]}
    run = RunDirectory.create_or_resume(tmp_path / "run", Cfg(model="other"), force=True)
    assert run.config()["model"] == "other"


def test_changed_input_file_is_refused(tmp_path):
    data = tmp_path / "qrels.tsv"
    data.write_text("q1\td1\t1\n")
    RunDirectory.create_or_resume(tmp_path / "run", Cfg(), input_files=[data])
    data.write_text("q1\td2\t1\n")
    with pytest.raises(ConfigError, match="input file changed"):
        RunDirectory.create_or_resume(tmp_path / "run", Cfg(), input_files=[data])


def test_missing_input_file(tmp_path):
    with pytest.raises(DataError):
        RunDirectory.create_or_resume(tmp_path / "run", Cfg(), input_files=[tmp_path / "nope.jsonl"])


def test_sha256_streams_large_files(tmp_path):
    big = tmp_path / "big.bin"
    payload = bytes(range(256)) * 20_000  # ~5 MB, several chunks
    big.write_bytes(payload)
    assert sha256_file(big, chunk_size=4096) == hashlib.sha256(payload).hexdigest()


def test_config_differences_nested():
    diff = config_differences({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": 1, "c": 5}, "e": 4})
    assert diff == {"a.c": (2, 5), "d": (3, None), "e": (None, 4)}


def test_metrics_jsonl_and_tensorboard(tmp_path):
    run = RunDirectory.create_or_resume(tmp_path / "run", {"x": 1})
    run.log_metrics(1, {"loss": 0.5, "note": "text"})
    run.log_metrics(2, {"loss": 0.25}, prefix="train/")
    with run.metrics_path.open("a") as handle:
        handle.write('{"step": 3, "lo')  # a line cut by a kill
    run.close()
    records = run.read_metrics()
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["loss"] == 0.5 and records[1]["train/loss"] == 0.25
    assert any(p.name.startswith("events.out.tfevents") for p in run.tb_dir.iterdir())


def test_wandb_mirrors_metrics_and_resumes_the_same_wandb_run(tmp_path, fake_wandb):
    fake = fake_wandb
    run = RunDirectory.create_or_resume(tmp_path / "run", Cfg())
    run.enable_wandb("coaug-scifact")
    run.log_metrics(1, {"loss": 0.5, "note": "text", "nan": float("nan"), "flag": True}, prefix="train/")
    run.close()
    assert fake.inits[0]["project"] == "coaug-scifact" and fake.inits[0]["resume"] == "allow"
    assert fake.inits[0]["config"] == {"model": "tiny", "train": {"lr": 1e-5, "steps": 10}}
    assert fake.logged == [(1, {"train/loss": 0.5})]
    assert fake.finished == 1

    resumed = RunDirectory.create_or_resume(tmp_path / "run", Cfg())
    resumed.enable_wandb("coaug-scifact")
    assert fake.inits[1]["id"] == fake.inits[0]["id"]


def test_wandb_asked_for_but_not_installed_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    run = RunDirectory.create_or_resume(tmp_path / "run", Cfg())
    with pytest.raises(ConfigError, match="wandb package is not installed") as err:
        run.enable_wandb("p")
    assert "pip install" in str(err.value)


def test_best_checkpoint_kept_only_when_better(tmp_path):
    run = RunDirectory.create_or_resume(tmp_path / "run", {"x": 1})

    def saver(tag):
        return lambda directory: (directory / "weights.txt").write_text(tag)

    assert run.update_best(5, "ndcg", 0.30, save=saver("a"))
    assert not run.update_best(10, "ndcg", 0.25, save=saver("b"))
    assert (run.best_dir / "weights.txt").read_text() == "a"
    assert run.update_best(15, "ndcg", 0.40, save=saver("c"))
    assert (run.best_dir / "weights.txt").read_text() == "c"
    assert run.best() == {"metric": "ndcg", "value": 0.40, "step": 15, "higher_is_better": True}
    assert not (run.path / "best.tmp").exists()
    report = run.write_report("test run", {"Result": {"dev ndcg@10": 0.4}}).read_text()
    assert "dev ndcg@10" in report and "## Configuration" in report and "| step | 15 |" in report


def test_last_checkpoint_skips_incomplete(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-x").mkdir()
    assert last_checkpoint(tmp_path).name == "checkpoint-4"
    assert last_checkpoint(tmp_path / "missing") is None


# -- training glue ---------------------------------------------------------------------


def test_grpo_config_layout_one_generation_batch_per_step(tmp_path):
    cfg = build_grpo_config(
        output_dir=tmp_path, max_steps=3, num_generations=4, prompts_per_step=6, micro_batch_size=8, device="cpu"
    )
    assert cfg.generation_batch_size == 24
    assert cfg.steps_per_generation == 3 and cfg.gradient_accumulation_steps == 3  # one optimiser update per step
    assert cfg.scale_rewards == "none" and cfg.loss_type == "dapo"
    assert (cfg.epsilon, cfg.epsilon_high, cfg.beta) == (0.2, 0.28, 0.0)
    assert cfg.use_cpu and not cfg.bf16 and not cfg.use_vllm and not cfg.shuffle_dataset
    two_updates = build_grpo_config(
        output_dir=tmp_path, max_steps=3, num_generations=4, prompts_per_step=6, micro_batch_size=4,
        updates_per_step=2, device="cpu",
    )
    assert two_updates.steps_per_generation == 6 and two_updates.gradient_accumulation_steps == 3


def test_grpo_config_rejects_uneven_micro_batches(tmp_path):
    with pytest.raises(ConfigError, match="micro_batch_size"):
        build_grpo_config(output_dir=tmp_path, max_steps=1, num_generations=3, prompts_per_step=2, micro_batch_size=4,
                          device="cpu")
    with pytest.raises(ConfigError, match="vllm"):
        build_grpo_config(output_dir=tmp_path, max_steps=1, num_generations=2, prompts_per_step=2, device="cpu",
                          use_vllm=True)


def test_lora_defaults_target_llama_qwen_projections():
    config = build_lora_config(LoraSettings())
    assert {"q_proj", "v_proj", "down_proj"} <= set(config.target_modules)
    assert build_lora_config(LoraSettings(enabled=False)) is None


class _Model:
    training = True

    def eval(self):
        self.training = False

    def train(self):
        self.training = True

    def save_pretrained(self, directory):
        (__import__("pathlib").Path(directory) / "adapter.txt").write_text("w")


def _state(step):
    return SimpleNamespace(global_step=step, is_world_process_zero=True)


def test_dev_evaluation_callback_keeps_best_and_stops_early(tmp_path):
    run = RunDirectory.create_or_resume(tmp_path / "run", {"x": 1})
    scores = {0: 0.1, 2: 0.3, 4: 0.2, 6: 0.25}
    seen_training_flags = []

    def evaluate(model, tokenizer, step):
        seen_training_flags.append(model.training)
        return {"ndcg@10": scores[step]}

    callback = DevEvaluationCallback(run, evaluate, metric="ndcg@10", every=2, patience=2)
    model, control = _Model(), SimpleNamespace(should_training_stop=False, should_save=False)
    callback.on_train_begin(None, _state(0), control, model=model)
    for step in range(1, 7):
        callback.on_step_end(None, _state(step), control, model=model)
        if control.should_training_stop:
            break
    assert step == 6 and control.should_training_stop
    assert seen_training_flags == [False] * 4 and model.training  # evaluated in eval mode, restored
    assert run.best()["step"] == 2 and (run.best_dir / "adapter.txt").exists()
    assert [r["dev/ndcg@10"] for r in run.read_metrics()] == [0.1, 0.3, 0.2, 0.25]
    # patience survives a restart: rebuilt from metrics.jsonl
    fresh = DevEvaluationCallback(run, evaluate, metric="ndcg@10", every=2, patience=2)
    assert fresh.evaluations_without_improvement() == 2


def test_min_delta_keeps_best_until_a_checkpoint_clears_it(tmp_path):
    run = RunDirectory.create_or_resume(tmp_path / "run", {"x": 1})
    assert run.update_best(0, "ndcg", 0.700, min_delta=0.01)  # the first evaluation is always kept
    assert not run.update_best(1, "ndcg", 0.709, min_delta=0.01)  # a gain inside the noise
    assert not run.update_best(2, "ndcg", 0.705, min_delta=0.01)
    assert run.update_best(3, "ndcg", 0.7101, min_delta=0.01)
    assert run.best()["step"] == 3
    assert not run.update_best(4, "ndcg", 0.715, min_delta=0.01)  # measured from the best so far, not from step 0
    assert run.update_best(5, "ndcg", 0.715)  # without it, any gain counts
    lower = RunDirectory.create_or_resume(tmp_path / "loss", {"x": 1})
    assert lower.update_best(0, "loss", 2.0, higher_is_better=False, min_delta=0.1)
    assert not lower.update_best(1, "loss", 1.95, higher_is_better=False, min_delta=0.1)
    assert lower.update_best(2, "loss", 1.85, higher_is_better=False, min_delta=0.1)


def test_dev_evaluation_min_delta_holds_the_baseline_and_drives_patience(tmp_path):
    run = RunDirectory.create_or_resume(tmp_path / "run", {"x": 1})
    scores = {0: 0.70, 2: 0.705, 4: 0.708, 6: 0.74}
    callback = DevEvaluationCallback(run, lambda m, t, s: {"ndcg@10": scores[s]}, metric="ndcg@10", every=2,
                                     patience=3, min_delta=0.01)
    model, control = _Model(), SimpleNamespace(should_training_stop=False, should_save=False)
    callback.on_train_begin(None, _state(0), control, model=model)
    for step in range(1, 5):
        callback.on_step_end(None, _state(step), control, model=model)
    assert run.best()["step"] == 0 and callback.evaluations_without_improvement() == 2
    assert not control.should_training_stop
    callback.on_step_end(None, _state(6), control, model=model)
    assert run.best()["step"] == 6 and callback.evaluations_without_improvement() == 0
    with pytest.raises(ConfigError, match="min_delta"):
        DevEvaluationCallback(run, lambda m, t, s: {}, metric="ndcg@10", every=2, min_delta=-0.01)


def test_dev_evaluation_must_return_metric(tmp_path):
    run = RunDirectory.create_or_resume(tmp_path / "run", {"x": 1})
    callback = DevEvaluationCallback(run, lambda m, t, s: {"other": 1.0}, metric="ndcg@10", every=1)
    with pytest.raises(ConfigError, match="ndcg@10"):
        callback.on_step_end(None, _state(1), SimpleNamespace(should_training_stop=False), model=_Model())


def test_train_with_resume_passes_last_checkpoint_and_trims_metrics(tmp_path):
    run = RunDirectory.create_or_resume(tmp_path / "run", {"x": 1})
    (run.checkpoints_dir / "checkpoint-2").mkdir()
    (run.checkpoints_dir / "checkpoint-2" / "trainer_state.json").write_text("{}")
    for step in (1, 2, 3):
        run.log_metrics(step, {"loss": float(step)})
    calls = []
    trainer = SimpleNamespace(train=lambda resume_from_checkpoint=None: calls.append(resume_from_checkpoint))
    assert train_with_resume(trainer, run).name == "checkpoint-2"
    assert calls == [str(run.checkpoints_dir / "checkpoint-2")]
    assert [r["step"] for r in run.read_metrics()] == [1, 2]
