"""Co-augmentation under several processes: the reward sees the whole step, whatever the split."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch.multiprocessing as mp

from searchrl.augment import ExpansionPolicy
from searchrl.coaug.batch import CoAugBatchBuilder
from searchrl.coaug.bm25 import CorpusStatistics
from searchrl.coaug.evaluate import BatchScorer
from searchrl.coaug.reward import CoAugReward
from searchrl.data import Document

WORDS = ["vitamin", "bone", "heart", "aspirin", "cell", "tumour", "oxygen", "tank", "virus", "memory"]


def make_reward() -> tuple[CoAugReward, dict]:
    rng = np.random.default_rng(0)
    corpus = {f"d{i}": Document(f"d{i}", " ".join(rng.choice(WORDS, size=6))) for i in range(30)}
    queries = {f"q{i}": " ".join(rng.choice(WORDS, size=3)) for i in range(4)}
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(4)}
    builder = CoAugBatchBuilder(corpus, queries, qrels, queries_per_step=2, group_size=4, relevant_per_query=1)
    scorer = BatchScorer("bm25", statistics=CorpusStatistics.from_documents(corpus.values()))
    reward = CoAugReward(builder, ExpansionPolicy(), scorer, samples_per_prompt=2, rounds=16, seed=3)
    batch = builder.build(0)
    prompts = batch.prompts
    columns = {"step": [], "prompt_index": [], "item_id": [], "completions": []}
    for index, item in enumerate(prompts):
        for sample in range(2):
            columns["step"].append(0)
            columns["prompt_index"].append(index)
            columns["item_id"].append(item.item_id)
            columns["completions"].append(" ".join(rng.choice(WORDS, size=2 + sample)) + "</answer>")
    return reward, columns


def _share(rank: int, world: int, port: int, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    reward, columns = make_reward()
    # TRL gives each process a contiguous share of the step's completions
    size = len(columns["step"]) // world
    part = slice(rank * size, (rank + 1) * size)
    rewards = reward(
        prompts=[None] * size, completions=columns["completions"][part], step=columns["step"][part],
        prompt_index=columns["prompt_index"][part], item_id=columns["item_id"][part],
    )
    queue.put((rank, rewards))
    dist.destroy_process_group()


def test_two_processes_compute_the_rewards_one_process_computes():
    reward, columns = make_reward()
    single = reward(prompts=[None] * len(columns["step"]), **columns)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_share, args=(rank, 2, port, queue)) for rank in range(2)]
    for worker in workers:
        worker.start()
    results = dict(queue.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert results[0] + results[1] == pytest.approx(single, nan_ok=True)
    # and not what each share would get scored alone: its pool would miss the other half
    assert len(results[0]) == len(single) // 2
