"""``searchrl export``: a run's best LoRA adapter (or merged model) with a model card that the
Hugging Face libraries read, and pushing through ``huggingface_hub`` (a recording stand-in here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from test_cli_retrieval import assert_user_error, run_cli

DEV_CURVE = [(0, 0.5012), (2, 0.5531), (4, 0.5377)]


def write_run(root: Path, tiny_lm_dir: Path, *, kind: str = "coaug") -> Path:
    """A run directory as `searchrl train` leaves it, with a saved LoRA adapter as RUN/best."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = root / "run"
    run.mkdir(parents=True)
    if kind == "coaug":
        from searchrl.coaug.train import CoAugConfig

        config = CoAugConfig.model_validate(
            {"model": str(tiny_lm_dir), "data": "hf:BeIR/scifact", "output_dir": str(run), "retriever": "bm25"}
        ).model_dump(mode="json")
    else:
        config = {"model": str(tiny_lm_dir), "data": {"questions": "qa.jsonl", "corpus": "corpus.jsonl"},
                  "tool": {"retriever": "bm25", "k": 3, "max_chars": 400},
                  "episode": {"max_turns": 4, "max_turn_tokens": 128, "max_model_tokens": 384}}
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (run / "inputs.json").write_text(json.dumps({"/data/scifact/corpus.jsonl": {"sha256": "ab" * 32, "bytes": 7_123_456}}))
    (run / "environment.json").write_text(json.dumps({"versions": {"searchrl": "0.1.0", "peft": "0.21.2"}}))
    metrics = [{"step": 0, "dev/ndcg@10": DEV_CURVE[0][1], "dev/query_format_ok_rate": 0.25}]
    metrics += [{"step": 1, "loss": 0.1}, {"step": 2, "dev/ndcg@10": DEV_CURVE[1][1], "dev/query_format_ok_rate": 0.5}]
    metrics += [{"step": 4, "dev/ndcg@10": DEV_CURVE[2][1]}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (run / "best.json").write_text(json.dumps({"metric": "ndcg@10", "value": 0.5531, "step": 2, "higher_is_better": True}))

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir))
    # Random B matrices, so the adapter changes the outputs (a fresh LoRA adapter is an identity).
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                      task_type="CAUSAL_LM")
    model = get_peft_model(base, lora)
    model.save_pretrained(str(run / "best"))
    AutoTokenizer.from_pretrained(str(tiny_lm_dir)).save_pretrained(str(run / "best"))
    (run / "best" / "training_args.bin").write_bytes(b"a pickle that must not travel")
    return run


def logits(model, tokenizer) -> "torch.Tensor":
    import torch

    inputs = tokenizer(["oxygen tank explosion"], return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture
def coaug_run(tmp_path, tiny_lm_dir) -> Path:
    return write_run(tmp_path, tiny_lm_dir)


def test_export_writes_an_adapter_with_a_model_card_peft_loads(coaug_run, tmp_path, tiny_lm_dir, capsys):
    from huggingface_hub import ModelCard
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    results = tmp_path / "test.json"
    results.write_text(json.dumps({"ndcg@10": 0.6789, "recall@100": 0.91, "num_queries": 300, "split": "test"}))
    code, out, err = run_cli(capsys, "export", coaug_run, "--results", results, "--json")
    assert code == 0, err
    summary = json.loads(out)
    folder = coaug_run / "export"
    assert summary["folder"] == str(folder) and summary["kind"] == "coaug" and not summary["merged"]
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "tokenizer.json"} <= set(summary["files"])
    assert not (folder / "training_args.bin").exists()  # pickles stay behind

    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "peft"
    assert card.data.datasets == ["BeIR/scifact"]
    assert {"searchrl", "lora", "query-expansion"} <= set(card.data.tags)
    assert card.data.base_model is None  # a local base model has no Hub id to name
    body = card.text
    assert "searchrl augment queries --model" in body and "--retriever bm25" in body
    assert "0.6789" in body and "| recall@100 | 0.9100 |" in body  # the held-out figures given
    assert "| 2 (best) | 0.5531 |" in body and "0.5377" in body  # the dev curve, best step marked
    assert "ab" * 32 in body and "7123456" in body  # data hashes
    assert "mode: coaug" in body  # the resolved config

    # PEFT loads the exported adapter onto its base model, and it computes what the run's adapter does.
    from peft import PeftModel

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    exported = AutoPeftModelForCausalLM.from_pretrained(str(folder))
    original = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir)), str(coaug_run / "best"))
    assert (logits(exported, tokenizer) - logits(original, tokenizer)).abs().max() < 1e-6


def test_export_merge_writes_a_model_transformers_loads(coaug_run, tmp_path, tiny_lm_dir, capsys):
    from huggingface_hub import ModelCard
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    code, out_text, err = run_cli(capsys, "export", coaug_run, "--merge", "--out", out)
    assert code == 0, err
    assert out_text.strip() == str(out)
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").exists()
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and "merged" in card.data.tags

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    merged = AutoModelForCausalLM.from_pretrained(str(out))
    adapter = AutoPeftModelForCausalLM.from_pretrained(str(coaug_run / "best"))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir))
    assert (logits(merged, tokenizer) - logits(adapter, tokenizer)).abs().max() < 1e-4
    assert (logits(merged, tokenizer) - logits(base, tokenizer)).abs().max() > 1e-3  # the adapter is in there

    # Exporting again replaces the earlier export; a folder holding other files is refused.
    assert run_cli(capsys, "export", coaug_run, "--merge", "--out", out)[0] == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, "export", coaug_run, "--out", other)
    assert_user_error(code, err, "holds other files")
    assert (other / "notes.txt").read_text() == "mine"


class RecordingHfApi:
    """Stands in for huggingface_hub.HfApi: records what it is asked to create and upload."""

    calls: list[tuple[str, dict]] = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        self.calls.append(("upload_folder", {"repo_id": repo_id, "folder_path": folder_path, "files": files, **kwargs}))


def test_push_uploads_the_export_with_the_hub_base_model(coaug_run, tmp_path, capsys, monkeypatch):
    import huggingface_hub
    from huggingface_hub import ModelCard

    RecordingHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHfApi)
    code, out, err = run_cli(capsys, "export", coaug_run, "--push", "me/scifact-coaug", "--private",
                             "--base-model", "HuggingFaceTB/SmolLM2-135M-Instruct", "--json")
    assert code == 0, err
    assert json.loads(out)["url"] == "https://huggingface.co/me/scifact-coaug"
    (create, created), (upload, uploaded) = RecordingHfApi.calls
    assert create == "create_repo" and created["repo_id"] == "me/scifact-coaug" and created["private"] is True
    assert upload == "upload_folder" and uploaded["repo_id"] == "me/scifact-coaug"
    assert uploaded["folder_path"] == str(coaug_run / "export")
    assert "searchrl-export.json" in uploaded["ignore_patterns"]  # local paths stay local
    files = uploaded["files"]
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors"} <= set(files)
    # What is pushed names the Hub base model, so the adapter loads anywhere.
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    card = ModelCard(files["README.md"].decode())
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.data.base_model_relation == "adapter"
    assert 'AutoPeftModelForCausalLM.from_pretrained("me/scifact-coaug")' in card.text

    # Without a Hub id for the base model there is nothing loadable to push.
    code, _, err = run_cli(capsys, "export", coaug_run, "--push", "me/x")
    assert_user_error(code, err, "no Hugging Face id", "--base-model OWNER/NAME")
    code, _, err = run_cli(capsys, "export", coaug_run, "--push", "not-a-repo")
    assert_user_error(code, err, "not a Hub repository id")


def test_agent_run_card_says_how_to_ask(tmp_path, tiny_lm_dir, capsys):
    from huggingface_hub import ModelCard

    run = write_run(tmp_path, tiny_lm_dir, kind="agent")
    code, _, err = run_cli(capsys, "export", run)
    assert code == 0, err
    card = ModelCard.load(run / "export" / "README.md")
    assert "search-agent" in card.data.tags
    assert "searchrl agent ask" in card.text and "--k 3 --max-chars 400 --max-turns 4" in card.text
    assert "None were given at export time" in card.text  # no held-out figures: said so


def test_export_errors(tmp_path, capsys):
    code, _, err = run_cli(capsys, "export", tmp_path / "nowhere")
    assert_user_error(code, err, "run directory not found")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: x\n")
    code, _, err = run_cli(capsys, "export", run)
    assert_user_error(code, err, "no best checkpoint yet")


def test_recipe_results_in_the_run_become_the_held_out_figures(coaug_run, capsys):
    from huggingface_hub import ModelCard

    recipe = {"bm25": 0.61, "untrained": 0.6, "trained": 0.64, "eval_split": "dev", "num_queries": 50,
              "queries": "the dev report queries (not used to choose the checkpoint)",
              "measures": {"bm25": {"ndcg@10": 0.6123}, "untrained": {"ndcg@10": 0.6001}, "trained": {"ndcg@10": 0.6456}}}
    (coaug_run / "recipe.json").write_text(json.dumps(recipe))
    assert run_cli(capsys, "export", coaug_run)[0] == 0
    text = ModelCard.load(coaug_run / "export" / "README.md").text
    held_out = text.split("## Held-out results", 1)[1].split("## Dev curve", 1)[0]
    assert "searchrl recipe coaug" in held_out and "50 queries" in held_out
    assert "**trained**" in held_out and "0.6456" in held_out and "0.6123" in held_out
