"""Shared fixtures: tiny in-process models and paths to the development data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> Path:
    """A random 2-layer Llama with a ChatML tokenizer, saved once per test session."""
    from searchrl.testing import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"))


@pytest.fixture(scope="session")
def tiny_st_dir(tmp_path_factory) -> Path:
    """A random 2-layer BERT sentence-transformers model, saved once per test session."""
    from searchrl.testing import build_tiny_sentence_transformer

    return build_tiny_sentence_transformer(tmp_path_factory.mktemp("tiny-st"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real development data (``$SEARCHRL_DATA`` or ``../shared/data``)."""
    from searchrl.paths import shared_data_dir

    path = shared_data_dir()
    if not (path / "scifact" / "corpus.jsonl").exists():
        pytest.skip(f"development data not found at {path}")
    return path


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny models run fastest on one thread, and several threads per process oversubscribe a
    shared 2-core machine (generation became over ten times slower that way)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer(tiny_lm_dir):
    """The tiny model's tokenizer (test modules may override it with their own)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_lm_dir))


class FakeWandb:
    """Stands in for the wandb package: records init arguments and logged metrics."""

    def __init__(self):
        self.inits, self.logged, self.finished = [], [], 0

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return self

    def log(self, data, step):
        self.logged.append((step, data))

    def finish(self):
        self.finished += 1


@pytest.fixture()
def fake_wandb(monkeypatch) -> FakeWandb:
    """Run directories get a recorder instead of the wandb package (not installed for tests).

    Patched at searchrl's import seam, not in sys.modules: transformers and TRL probe for wandb
    themselves and would start using a stand-in found there.
    """
    import searchrl.runs

    fake = FakeWandb()
    monkeypatch.setattr(searchrl.runs, "_import_wandb", lambda: fake)
    return fake
