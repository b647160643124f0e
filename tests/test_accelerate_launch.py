"""``accelerate launch --num_processes 2`` of both trainers on CPU (gloo), end to end through the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import yaml

from test_agent_recipe import write_data
from test_coaug_train import tiny_config, write_tiny_beir

from searchrl import train_coaug

pytestmark = pytest.mark.skipif(shutil.which("accelerate") is None, reason="the accelerate launcher is not installed")

LAUNCH = ["accelerate", "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
          "--dynamo_backend", "no", "-m", "searchrl"]


def run(argv, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def train_records(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "train/reward" in r]


def test_two_processes_train_coaug_with_the_rewards_of_one(tiny_lm_dir, tmp_path):
    config = tiny_config(tiny_lm_dir, write_tiny_beir(tmp_path / "beir"), tmp_path / "one", grpo__steps=1,
                         eval__at_start=False, eval__every=100, batch__background_corpus=True)
    path = tmp_path / "coaug.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    train_coaug(config)  # one process: this one
    run([*LAUNCH, "train", "coaug", "--config", str(path), "--out", str(tmp_path / "two")], tmp_path)
    one, two = train_records(tmp_path / "one"), train_records(tmp_path / "two")
    assert len(one) == len(two) == 1  # one record per step: only the main process logs
    for key in ("train/reward", "train/reward_std", "train/coaug/pool_documents", "train/loss", "train/num_tokens"):
        assert two[0][key] == pytest.approx(one[0][key]), key


def test_two_processes_train_the_agent(tiny_lm_dir, tmp_path):
    data = write_data(tmp_path / "data")
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({
        "model": str(tiny_lm_dir), "device": "cpu", "output_dir": str(tmp_path / "two"),
        "data": {"questions": str(data / "questions.jsonl"), "corpus": str(data / "corpus.jsonl"), "dev_size": 2},
        "tool": {"k": 2}, "episode": {"max_turns": 2, "max_turn_tokens": 6, "max_model_tokens": 16},
        "lora": {"r": 4, "alpha": 8},
        "grpo": {"steps": 1, "prompts_per_step": 2, "num_generations": 2, "save_steps": 5},
        "eval": {"every": 5, "at_start": False, "report_fraction": 0},
    }))
    run([*LAUNCH, "train", "agent", "--config", str(path)], tmp_path)
    records = train_records(tmp_path / "two")
    assert [r["step"] for r in records] == [1]
    assert (tmp_path / "two" / "final" / "adapter_config.json").exists()
