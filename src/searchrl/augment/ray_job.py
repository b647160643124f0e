"""Corpus augmentation over a Ray cluster: the same job, each batch split across Ray workers.

Optional: ``pip install 'searchrl[ray]'``. :class:`RayEnginePool` is a
:class:`~searchrl.llm.engine.GenerationEngine` backed by one Ray actor per worker; each actor
builds its own engine once (from a picklable zero-argument factory: the transformers, vLLM or
OpenAI engine of ``searchrl augment``) and keeps it loaded. :meth:`RayEnginePool.generate` cuts
the prompts of one call into one contiguous chunk per worker, runs the chunks at once and
returns the completions in prompt order.

Handed to :class:`~searchrl.augment.CorpusAugmentationJob` as its engine, the pool changes
nothing else: the driver still writes ``expansions.jsonl`` batch by batch in the plain job's
order and format, with the same manifest, resume, folder lock and progress bar — so a folder
started with Ray can be finished without it and the other way round. A worker process that
dies (killed, out of memory, a lost node) is restarted by Ray and its chunk run again, up to
``max_retries`` times; past that the call raises :class:`~searchrl.errors.EngineError`, the job
stops as ``"interrupted"`` with every finished batch on disk, and rerunning the same command
resumes. Nothing is written by the workers, so nothing can be written twice.

>>> from functools import partial                                           # doctest: +SKIP
>>> from searchrl.llm import build_engine                                    # doctest: +SKIP
>>> with ray_cluster(None, num_cpus=2):                                      # doctest: +SKIP
...     pool = RayEnginePool(partial(build_engine, "transformers", model="smollm2-135m-instruct"), workers=2)
...     CorpusAugmentationJob(items, "out/docs", role="document", engine=pool, batch_size=32).run()
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from searchrl.errors import ConfigError, EngineError, SearchRLError
from searchrl.llm.engine import Chat, GenerationEngine, SamplingParams


def _import_ray():
    try:
        import ray
    except ImportError as err:
        raise ConfigError(
            f"--ray needs the ray package ({err})", hint="pip install 'searchrl[ray]', or run without --ray"
        ) from None
    return ray


@contextmanager
def ray_cluster(address: str | None, *, num_cpus: int | None = None) -> Iterator[dict[str, float]]:
    """Connect to the Ray cluster at ``address`` (``"auto"``, ``"ray://host:10001"``...) or, with
    ``None``, start a local one with ``num_cpus`` CPUs (default: this machine's); yields the
    cluster's resources (``{"CPU": 2.0, ...}``). A local cluster started here is shut down on
    exit; an existing connection (``ray.init`` called earlier) is used as it is and left open.
    """
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        try:
            if address is None:
                # "local": a new cluster of this process's own, even where `ray start` left one running
                ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                         configure_logging=False)
            else:
                ray.init(address=address, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise ConfigError(
                f"cannot reach the Ray cluster at {address!r}: {err}",
                hint="start it with `ray start --head`, or leave --ray-address out for a local cluster",
            ) from None
        started = True
    try:
        yield dict(ray.cluster_resources())
    finally:
        if started:
            ray.shutdown()


def default_workers(resources: dict[str, float]) -> tuple[int, float, float]:
    """``(workers, CPUs per worker, GPUs per worker)`` for a cluster: one worker per GPU when it
    has GPUs, else one single-threaded worker per CPU."""
    gpus = int(resources.get("GPU", 0))
    if gpus > 0:
        return gpus, 1.0, 1.0
    return max(1, int(resources.get("CPU", 1))), 1.0, 0.0


class _Worker:
    """One Ray actor: builds its engine once and generates for the chunks it is sent."""

    def __init__(self, factory: Callable[[], GenerationEngine]) -> None:
        # An engine that cannot load is reported by ready() as the error it raised (Ray would
        # report a failed constructor only as a dead actor).
        self.engine, self.error = None, None
        try:
            self.engine = factory()
        except Exception as err:  # noqa: BLE001 - re-raised in the driver by ready()
            self.error = err

    def ready(self) -> str:
        if self.error is not None:
            raise self.error
        return f"{os.uname().nodename}:{os.getpid()}"

    def generate(self, prompts: Sequence[Chat], params: SamplingParams) -> list[list[str]]:
        return self.engine.generate(prompts, params)

    def close(self) -> None:
        self.engine.close()


class RayEnginePool(GenerationEngine):
    """``workers`` Ray actors, each with its own engine from ``factory``; one call fans out to all.

    ``num_cpus`` / ``num_gpus`` are each actor's Ray resources (a CPU worker's torch threads
    follow ``num_cpus``). ``max_retries``: how often a chunk whose worker died is run again on
    the restarted worker. Building the pool waits until every worker has loaded its engine, so a
    model that fails to load fails here, before a job writes anything.
    """

    def __init__(
        self,
        factory: Callable[[], GenerationEngine],
        *,
        workers: int,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        max_retries: int = 2,
        model_name: str = "",
    ) -> None:
        if workers < 1:
            raise ConfigError(f"a Ray pool needs at least one worker, got {workers}")
        if max_retries < 0:
            raise ConfigError(f"max_retries must be 0 or more, got {max_retries}")
        ray = _import_ray()
        self._ray = ray
        self.model_name = model_name
        actor_class = ray.remote(
            num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_retries, max_task_retries=max_retries
        )(_Worker)
        self.actors = [actor_class.remote(factory) for _ in range(workers)]
        try:
            self.hosts = self._get([actor.ready.remote() for actor in self.actors], "start")
        except BaseException:
            self.close()  # release the workers' resources
            raise

    def generate(self, prompts: Sequence[Chat], params: SamplingParams) -> list[list[str]]:
        """For each chat, ``params.n`` completions, computed by the workers in parallel."""
        if not prompts:
            return []
        size = -(-len(prompts) // len(self.actors))
        chunks = [list(prompts[start : start + size]) for start in range(0, len(prompts), size)]
        futures = [actor.generate.remote(chunk, params) for actor, chunk in zip(self.actors, chunks)]
        return [group for result in self._get(futures, "generate") for group in result]

    def _get(self, futures: list, action: str) -> list:
        ray = self._ray
        try:
            return ray.get(futures)
        except ray.exceptions.RayTaskError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, SearchRLError):
                raise cause from None
            raise EngineError(f"a Ray worker failed to {action}: {cause or err}") from None
        except ray.exceptions.RayError as err:  # a worker died more often than max_retries allows
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise EngineError(
                f"a Ray worker died and could not {action} ({first_line})",
                hint="rerun the same command to resume; finished batches are kept",
            ) from None

    def close(self) -> None:
        """Stop the workers (their engines are released with their processes)."""
        for actor in self.actors:
            self._ray.kill(actor)
        self.actors = []


def engine_pool_factory(
    factory: Callable[[], GenerationEngine], resources: dict[str, float], *, workers: int | None = None, **options: Any
) -> tuple[Callable[[], RayEnginePool], int]:
    """A zero-argument factory of a :class:`RayEnginePool` sized for ``resources`` (see
    :func:`default_workers`; ``workers`` overrides the count), and that worker count."""
    count, num_cpus, num_gpus = default_workers(resources)
    count = workers or count

    def build() -> RayEnginePool:
        return RayEnginePool(factory, workers=count, num_cpus=num_cpus, num_gpus=num_gpus, **options)

    return build, count
