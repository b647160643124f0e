"""Corpus augmentation on a local Ray cluster (2 CPU workers).

The Ray job must write exactly what the single-process job writes, and a worker process killed
mid-job must cost nothing: either Ray restarts it and the job finishes, or the job stops as
interrupted and the rerun finishes it, with every id written exactly once.

The worker-failure tests run a scripted engine (pure Python: a restarted worker is up in about
a second instead of the seconds it takes to import torch and load a model); so does the
failed-load test, whose engine fails to load as ``build_engine`` does for a missing model folder
(``tests/test_resolver.py`` checks that error). The ``--ray`` CLI test runs the tiny transformers
model, as users' workers do.
"""

from __future__ import annotations

import functools
import json
import os
import sys

import pytest
import test_augment
from test_augment import ScriptedEngine, make_items, read_records, run_cli

ray = pytest.importorskip("ray")

from searchrl.augment import CorpusAugmentationJob, ExpansionPolicy  # noqa: E402
from searchrl.augment.ray_job import RayEnginePool, ray_cluster  # noqa: E402
from searchrl.errors import EngineError  # noqa: E402
from searchrl.llm.engine import GenerationEngine  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.xdist_group("ray")]  # one local cluster, on one test worker

# Classes defined in tests/ travel to the Ray workers by value (the workers cannot import tests/).
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
ray.cloudpickle.register_pickle_by_value(test_augment)

POLICY = ExpansionPolicy(lenient=True, sampling={"max_new_tokens": 8, "stop": ["</answer>"]})
ITEMS = make_items(24)


class DiesOnce(GenerationEngine):
    """Kills its own worker process at its ``at_call``-th generate call, once across all workers
    (the first worker to create ``marker`` dies; a restarted worker finds the marker and lives)."""

    def __init__(self, factory, marker: str, at_call: int) -> None:
        self.engine = factory()
        self.marker, self.at_call, self.calls = marker, at_call, 0
        self.model_name = self.engine.model_name

    def generate(self, prompts, params):
        self.calls += 1
        if self.calls == self.at_call:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                pass
            else:
                os._exit(1)  # the worker process dies as if killed
        return self.engine.generate(prompts, params)


@pytest.fixture(scope="module")
def cluster():
    with ray_cluster(None, num_cpus=2) as resources:
        yield resources


@pytest.fixture(scope="module")
def factory():
    return ScriptedEngine


@pytest.fixture(scope="module")
def reference(tmp_path_factory, factory):
    """The single-process job's output, batch by batch as the workers will see it (4 items)."""
    out = tmp_path_factory.mktemp("reference")
    manifest = CorpusAugmentationJob(ITEMS, out, role="document", policy=POLICY, engine=factory(), batch_size=4,
                                     model_name="scripted", engine_name="scripted").run(show_progress=False)
    return out, manifest


def ray_job(out, factory, pools, **pool_options):
    """A job whose engine is a 2-worker Ray pool (kept in ``pools`` so the test can stop it)."""

    def build_pool():
        pools.append(RayEnginePool(factory, workers=2, **pool_options))
        return pools[-1]

    return CorpusAugmentationJob(ITEMS, out, role="document", policy=POLICY, engine=build_pool, batch_size=8,
                                 model_name="scripted", engine_name="scripted")


def test_a_killed_worker_is_restarted_and_its_chunk_run_again(cluster, factory, reference, tmp_path):
    marker = tmp_path / "killed"
    dying = functools.partial(DiesOnce, factory, str(marker), 2)
    pools: list[RayEnginePool] = []
    try:
        manifest = ray_job(tmp_path / "out", dying, pools, max_retries=1).run(show_progress=False)
    finally:
        for pool in pools:
            pool.close()
    assert marker.exists()  # a worker did die mid-job
    assert manifest["status"] == "complete"
    assert (tmp_path / "out" / "expansions.jsonl").read_bytes() == (reference[0] / "expansions.jsonl").read_bytes()


def test_a_job_stopped_by_a_dead_worker_resumes_without_losing_or_repeating(cluster, factory, reference, tmp_path):
    out = tmp_path / "out"
    dying = functools.partial(DiesOnce, factory, str(tmp_path / "killed"), 2)
    pools: list[RayEnginePool] = []
    try:
        with pytest.raises(EngineError, match="Ray worker died"):
            ray_job(out, dying, pools, max_retries=0).run(show_progress=False)
    finally:
        for pool in pools:
            pool.close()
    stopped = json.loads((out / "manifest.json").read_text())
    assert stopped["status"] == "interrupted" and stopped["counts"]["done"] == 8  # the first batch was kept

    try:
        resumed = ray_job(out, factory, pools).run(show_progress=False)
        assert len(set(pools[-1].hosts)) == 2  # two worker processes
    finally:
        for pool in pools:
            pool.close()
    ids = [r["id"] for r in read_records(out / "expansions.jsonl")]
    assert sorted(ids) == sorted(ITEMS) and len(ids) == len(set(ids))
    assert resumed["status"] == "complete" and resumed["last_run"]["generated"] == 16
    # the Ray job wrote what the single-process job writes
    ref_out, ref_manifest = reference
    assert (out / "expansions.jsonl").read_bytes() == (ref_out / "expansions.jsonl").read_bytes()
    assert resumed["settings"] == ref_manifest["settings"] and resumed["counts"] == ref_manifest["counts"]
    assert len({r["completion"] for r in read_records(out / "expansions.jsonl")}) > 1  # not one repeated output


class CannotLoad(GenerationEngine):
    """An engine whose model is not there: it raises ``ModelError`` as it is built, as
    ``build_engine`` does for a missing folder, without importing torch in every worker."""

    def __init__(self, path: str) -> None:
        from searchrl.errors import ModelError

        raise ModelError(f"no such file or folder: {path}", hint="pass a model name or an existing folder")

    def generate(self, prompts, params):  # pragma: no cover - never built
        raise AssertionError


def test_a_model_that_cannot_load_fails_the_pool_with_its_own_error(cluster, tmp_path):
    from searchrl.errors import ModelError

    assert cluster["CPU"] == 2

    missing = functools.partial(CannotLoad, str(tmp_path / "missing"))
    with pytest.raises(ModelError, match="missing"):
        RayEnginePool(missing, workers=2)
    import time

    deadline = time.monotonic() + 30  # Ray frees a killed worker's CPU asynchronously
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU") == 2  # the workers were released


def test_cli_ray_option_matches_the_plain_command(cluster, tiny_lm_dir, tmp_path, capsys):
    data = tmp_path / "beir"
    data.mkdir()
    docs = [{"_id": item_id, "title": "", "text": text} for item_id, text in make_items(10).items()]
    (data / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    common = ["augment", "corpus", "--data", str(data), "--model", str(tiny_lm_dir), "--engine", "transformers",
              "--max-new-tokens", "6", "--batch-size", "3", "--no-progress"]
    assert run_cli([*common, "--out", str(tmp_path / "plain")]) == 0
    assert run_cli([*common, "--out", str(tmp_path / "ray"), "--ray", "--ray-workers", "2"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["done"] == 10 and summary["status"] == "complete"
    plain, on_ray = (json.loads((tmp_path / name / "manifest.json").read_text()) for name in ("plain", "ray"))
    assert on_ray["settings"] == plain["settings"] and on_ray["source"]["ray"] == {"address": "local", "workers": 2}
    assert (tmp_path / "ray" / "expansions.jsonl").read_bytes() == (tmp_path / "plain" / "expansions.jsonl").read_bytes()
