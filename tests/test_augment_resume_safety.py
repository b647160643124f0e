"""`searchrl augment` never mixes two models in one file, never runs twice into one folder, and a
failed start (a typo in --model) leaves nothing that blocks the corrected command."""

from __future__ import annotations

import json
import shutil
import threading

import pytest

from searchrl.augment import CorpusAugmentationJob
from searchrl.errors import ConfigError
from searchrl.llm.engine import GenerationEngine


class EchoEngine(GenerationEngine):
    """Continues the prefilled <answer> with the input's first word; can wait on an event."""

    model_name = "echo"

    def __init__(self, gate: threading.Event | None = None, started: threading.Event | None = None) -> None:
        self.gate, self.started = gate, started

    def generate(self, prompts, params):
        if self.started is not None:
            self.started.set()
        if self.gate is not None:
            assert self.gate.wait(30)
        return [[chat[1]["content"].split()[-1] + "</answer>"] * params.n for chat in prompts]


def _items(n: int = 6) -> dict[str, str]:
    return {f"d{i}": f"document number {i}" for i in range(n)}


@pytest.fixture
def beir(tmp_path):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{i}", "title": "", "text": f"text {i}"} for i in range(5)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "question"}) + "\n")
    (folder / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    return folder


@pytest.fixture
def echo_engines(monkeypatch):
    """The CLI builds an EchoEngine instead of loading the model (the model is still resolved)."""
    import searchrl.llm as llm

    built = []
    monkeypatch.setattr(llm, "build_engine", lambda kind="transformers", model="", **o: built.append((kind, model, o)) or EchoEngine())
    return built


def run_cli(args, capsys) -> tuple[int, str]:
    from searchrl.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, capsys.readouterr().err


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# ----------------------------------------------------------------------------- defect 7


def test_a_typo_in_model_writes_nothing_and_the_corrected_command_runs(beir, tmp_path, tiny_lm_dir, echo_engines, capsys):
    out = tmp_path / "out"
    code, err = run_cli(["augment", "corpus", "--data", str(beir), "--out", str(out),
                         "--model", str(tmp_path / "no-such-modle"), "--no-progress"], capsys)
    assert code == 2 and "no-such-modle" in err
    assert not (out / "manifest.json").exists() and not (out / "expansions.jsonl").exists()
    code, err = run_cli(["augment", "corpus", "--data", str(beir), "--out", str(out),
                         "--model", str(tiny_lm_dir), "--no-progress"], capsys)
    assert code == 0, err
    assert len(_lines(out / "expansions.jsonl")) == 5


def test_an_engine_that_fails_to_start_leaves_no_manifest(tmp_path):
    def broken():
        raise ConfigError("cannot start the engine")

    job = CorpusAugmentationJob(_items(), tmp_path / "out", role="document", engine=broken, model_name="a")
    with pytest.raises(ConfigError):
        job.run(show_progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()
    again = CorpusAugmentationJob(_items(), tmp_path / "out", role="document", engine=EchoEngine(), model_name="b")
    assert again.run(show_progress=False)["status"] == "complete"


# ----------------------------------------------------------------------------- defect 6


def _perturb(folder):
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / "model.safetensors"))
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1.0
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_resuming_with_retrained_weights_at_the_same_path_is_refused_until_forced(beir, tmp_path, tiny_lm_dir, echo_engines, capsys):
    best = tmp_path / "run" / "best"
    shutil.copytree(tiny_lm_dir, best)
    out = tmp_path / "out"
    args = ["augment", "corpus", "--data", str(beir), "--out", str(out), "--model", str(best), "--no-progress"]
    assert run_cli(args + ["--limit", "2"], capsys)[0] == 0
    first = json.loads((out / "manifest.json").read_text())["settings"]["generator"]["weights"]["base"]
    assert first.startswith("sha256:")

    _perturb(best)  # more training, same path
    code, err = run_cli(args, capsys)
    assert code == 2 and "generator.weights.base" in err and "--force" in err
    assert len(_lines(out / "expansions.jsonl")) == 2  # nothing mixed in

    code, err = run_cli(args + ["--force"], capsys)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["generator"]["weights"]["base"] != first and manifest["status"] == "complete"
    ids = [r["id"] for r in _lines(out / "expansions.jsonl")]
    assert sorted(ids) == [f"d{i}" for i in range(5)]  # restarted: every id once


def test_resuming_against_another_server_is_refused(beir, tmp_path, echo_engines, capsys):
    out = tmp_path / "out"
    args = ["augment", "corpus", "--data", str(beir), "--out", str(out), "--model", "m", "--engine", "openai", "--no-progress"]
    assert run_cli(args + ["--base-url", "http://127.0.0.1:8000", "--limit", "1"], capsys)[0] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["generator"] == {"base_url": "http://127.0.0.1:8000/v1", "model": "m"}
    code, err = run_cli(args + ["--base-url", "http://127.0.0.1:9000/v1"], capsys)
    assert code == 2 and "base_url" in err and "9000" in err
    # The same server written differently is the same server.
    assert run_cli(args + ["--base-url", "http://127.0.0.1:8000/v1/"], capsys)[0] == 0


def test_a_second_job_into_the_same_folder_fails_at_once(tmp_path):
    gate, started = threading.Event(), threading.Event()
    first = CorpusAugmentationJob(_items(), tmp_path / "out", role="document",
                                  engine=EchoEngine(gate, started), model_name="echo", batch_size=2)
    result = {}
    thread = threading.Thread(target=lambda: result.update(first.run(show_progress=False)))
    thread.start()
    try:
        assert started.wait(30)
        second = CorpusAugmentationJob(_items(), tmp_path / "out", role="document", engine=EchoEngine(), model_name="echo")
        with pytest.raises(ConfigError, match="another") as info:
            second.run(show_progress=False)
        assert "lock" in str(info.value) or "running" in str(info.value)
    finally:
        gate.set()
        thread.join(30)
    assert result["status"] == "complete"
    ids = [r["id"] for r in _lines(tmp_path / "out" / "expansions.jsonl")]
    assert ids == list(_items())  # each once, in order
    # Once the first run has finished, the folder can be opened again.
    assert CorpusAugmentationJob(_items(), tmp_path / "out", role="document", engine=EchoEngine(),
                                 model_name="echo").run(show_progress=False)["status"] == "complete"
