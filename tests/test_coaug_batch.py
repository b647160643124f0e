"""Per-step co-augmentation batches and role-scaled group advantages."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from coaug_oracle import group_advantages, role_scaled_advantages
from searchrl.coaug.reward import AdvantageScales
from searchrl.coaug.batch import CoAugBatchBuilder
from searchrl.coaug.reward import sampled_ndcg_rewards
from searchrl.data.types import Document, document_text
from searchrl.errors import ConfigError, DataError


def make_data(num_queries=6, num_docs=60):
    """Queries q0..q5; q_i is relevant to d_{3i} (grade 1), d_{3i+1} (grade 2); d_{3i+2} is judged 0.

    q5 has only a zero-grade judgement, so it cannot be trained on. d0 is also relevant to q1.
    """
    corpus = {f"d{i}": Document(f"d{i}", f"body {i}", f"title {i}") for i in range(num_docs)}
    queries = {f"q{i}": f"question {i}" for i in range(num_queries)}
    qrels = {f"q{i}": {f"d{3 * i}": 1, f"d{3 * i + 1}": 2, f"d{3 * i + 2}": 0} for i in range(num_queries - 1)}
    qrels["q1"]["d0"] = 1
    qrels[f"q{num_queries - 1}"] = {"d59": 0}
    return corpus, queries, qrels


def builder(**options):
    corpus, queries, qrels = make_data()
    defaults = dict(queries_per_step=2, group_size=8, relevant_per_query=3, seed=7)
    return CoAugBatchBuilder(corpus, queries, qrels, **{**defaults, **options})


def test_group_structure_and_relevance_matrix():
    b = builder()
    corpus, _, qrels = make_data()
    batch = b.build(0)
    assert len(batch.items) == 2 * 8
    groups = [batch.items[i * 8 : (i + 1) * 8] for i in range(2)]
    for group_index, group in enumerate(groups):
        assert [item.group for item in group] == [group_index] * 8
        assert group[0].role == "query" and group[0].kind == "query"
        kinds = Counter(item.kind for item in group[1:])
        assert kinds == {"relevant": 3, "random_negative": 4}
        query_id = group[0].item_id
        for item in group[1:]:
            assert item.role == "document"
            assert item.text == document_text(corpus[item.item_id])
            if item.kind == "relevant":
                assert qrels[query_id][item.item_id] > 0
    # Rows are the queries, columns the documents, graded from the qrels for every pair.
    assert batch.relevance.shape == (2, 14)
    for i, query in enumerate(batch.queries):
        for j, doc in enumerate(batch.documents):
            assert batch.relevance[i, j] == max(qrels.get(query.item_id, {}).get(doc.item_id, 0), 0)


def test_random_negatives_are_relevant_to_no_query_and_distinct_in_a_group():
    b = builder(group_size=12)
    _, _, qrels = make_data()
    relevant_anywhere = {d for grades in qrels.values() for d, g in grades.items() if g > 0}
    for step in range(6):
        for group in range(2):
            negatives = [i.item_id for i in b.build(step).items if i.group == group and i.kind == "random_negative"]
            assert len(negatives) == 8 and len(set(negatives)) == 8
            assert not relevant_anywhere & set(negatives)


def test_queries_without_relevant_documents_are_skipped_and_epochs_cover_each_query_once():
    b = builder()
    assert b.skipped_query_ids == ["q5"]
    assert b.training_query_ids == ["q0", "q1", "q2", "q3", "q4"]
    assert b.steps_per_epoch == 2  # 5 queries, 2 per step: one left over each epoch
    for epoch in range(3):
        seen = [item.item_id for step in (2 * epoch, 2 * epoch + 1) for item in b.build(step).queries]
        assert len(seen) == 4 and len(set(seen)) == 4
        assert seen == b.epoch_order(epoch)[:4]
    assert b.epoch_order(0) != b.epoch_order(1) or b.epoch_order(1) != b.epoch_order(2)


def test_batches_are_deterministic_and_random_access():
    first = builder().build(3)
    again = builder().build(3)
    assert first.items == again.items
    np.testing.assert_array_equal(first.relevance, again.relevance)
    from_iterator = next(builder().batches(start_step=3))
    assert from_iterator.items == first.items
    assert builder(seed=8).build(3).items != first.items


def test_relevant_documents_with_and_without_replacement():
    # Every training query has 2 relevant documents (q1 has 3).
    with_replacement = builder(relevant_per_query=4, group_size=8).build(0)
    for group in range(2):
        relevant = [i.item_id for i in with_replacement.items if i.group == group and i.kind == "relevant"]
        assert len(relevant) == 4  # repeats allowed, as in CoAug
    without = builder(relevant_per_query=4, group_size=8, relevant_with_replacement=False).build(0)
    for group, query in enumerate(without.queries):
        members = [i for i in without.items if i.group == group]
        relevant = [i.item_id for i in members if i.kind == "relevant"]
        assert len(relevant) == len(set(relevant)) == (3 if query.item_id == "q1" else 2)
        assert len(members) == 8  # filled with random negatives


def test_hard_negatives_come_from_candidates_and_skip_relevant_documents():
    candidates = {f"q{i}": [f"d{3 * i}", f"d{3 * i + 2}", "d40", "d41", "d42", "d0"] for i in range(5)}
    b = builder(hard_negatives=2, hard_negative_candidates=candidates, group_size=9)
    _, _, qrels = make_data()
    for step in range(4):
        batch = b.build(step)
        for group, query in enumerate(batch.queries):
            hard = [i.item_id for i in batch.items if i.group == group and i.kind == "hard_negative"]
            assert len(hard) == 2 and len(set(hard)) == 2
            assert set(hard) <= set(candidates[query.item_id])
            assert all(qrels[query.item_id].get(d, 0) <= 0 for d in hard)
            members = [i for i in batch.items if i.group == group]
            assert len(members) == 9


def test_few_hard_negative_candidates_are_topped_up_with_random_negatives():
    b = builder(hard_negatives=3, hard_negative_candidates={"q0": ["d50"]}, group_size=8)
    batch = b.build(0)
    for group, query in enumerate(batch.queries):
        kinds = Counter(i.kind for i in batch.items if i.group == group)
        n_hard = 1 if query.item_id == "q0" else 0
        assert kinds["hard_negative"] == n_hard
        assert kinds["random_negative"] == 8 - 1 - 3 - n_hard


@pytest.mark.parametrize(
    "mode, expand_queries, expand_documents", [("coaug", True, True), ("query", True, False), ("document", False, True)]
)
def test_modes_choose_which_side_is_expanded(mode, expand_queries, expand_documents):
    batch = builder(mode=mode).build(0)
    assert all(q.expand == expand_queries for q in batch.queries)
    assert all(d.expand == expand_documents for d in batch.documents)
    assert [i.item_id for i in batch.items] == [i.item_id for i in builder(mode="coaug").build(0).items]
    query_prompt, doc_prompt = batch.sample_layout(samples_per_prompt=5)
    assert len(query_prompt) == 2 * (5 if expand_queries else 1)
    assert len(doc_prompt) == 14 * (5 if expand_documents else 1)
    assert doc_prompt.max() == 13 and (np.diff(doc_prompt) >= 0).all()


def test_batch_feeds_the_reward():
    batch = builder().build(0)
    query_prompt, doc_prompt = batch.sample_layout(samples_per_prompt=2)
    rng = np.random.default_rng(0)
    scores = rng.random((len(query_prompt), len(doc_prompt)))
    result = sampled_ndcg_rewards(scores, query_prompt, doc_prompt, batch.relevance, rounds=4, seed=0)
    assert result.query_rewards.shape == (4,) and result.document_rewards.shape == (28,)


def test_configuration_errors():
    corpus, queries, qrels = make_data()
    with pytest.raises(ConfigError, match="group_size"):
        CoAugBatchBuilder(corpus, queries, qrels, queries_per_step=2, group_size=4, relevant_per_query=5)
    with pytest.raises(ConfigError, match="hard_negative_candidates"):
        CoAugBatchBuilder(
            corpus, queries, qrels, queries_per_step=2, group_size=8, relevant_per_query=2, hard_negatives=1
        )
    with pytest.raises(ConfigError, match="mode"):
        CoAugBatchBuilder(corpus, queries, qrels, mode="both")
    with pytest.raises(ConfigError, match="queries_per_step"):
        CoAugBatchBuilder(corpus, queries, qrels, queries_per_step=6, group_size=8, relevant_per_query=2)
    with pytest.raises(ConfigError, match="relevant to no query"):
        small_corpus = dict(list(corpus.items())[:20])
        CoAugBatchBuilder(small_corpus, queries, qrels, queries_per_step=2, group_size=16, relevant_per_query=2)


def test_data_errors_name_the_offending_ids():
    corpus, queries, qrels = make_data()
    qrels["q0"]["missing-doc"] = 1
    with pytest.raises(DataError, match="missing-doc"):
        CoAugBatchBuilder(corpus, queries, qrels, queries_per_step=2, group_size=8, relevant_per_query=2)
    corpus, queries, qrels = make_data()
    b = CoAugBatchBuilder(
        corpus, queries, qrels, queries_per_step=2, group_size=8, relevant_per_query=2,
        hard_negatives=1, hard_negative_candidates={q: ["nowhere"] for q in queries},
    )
    with pytest.raises(DataError, match="nowhere"):
        b.build(0)


# --- advantages ----------------------------------------------------------------------------------


def test_group_advantages_centre_without_std_division():
    rewards = [0.9, 0.5, 0.1, 2.0, 4.0]
    # group 0 mean 0.5 -> 0.4, 0, -0.4; group 1 mean 3 -> -1, 1 (not -1/1 divided by std 1).
    np.testing.assert_allclose(group_advantages(rewards, [0, 0, 0, 1, 1]), [0.4, 0.0, -0.4, -1.0, 1.0])
    # Groups need not be contiguous.
    np.testing.assert_allclose(group_advantages([1.0, 5.0, 3.0, 7.0], [1, 0, 1, 0]), [-1.0, -1.0, 1.0, 1.0])


def test_missing_rewards_are_left_out_of_the_mean_and_get_zero():
    advantages = group_advantages([1.0, np.nan, 3.0, np.nan], [0, 0, 0, 1])
    np.testing.assert_allclose(advantages, [-1.0, 0.0, 1.0, 0.0])


def test_role_scales_default_and_configured():
    rewards = [1.0, 0.0] * 5
    prompts = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    kinds = ["query", "relevant", "hard_negative", "random_negative", "query"]
    np.testing.assert_allclose(
        role_scaled_advantages(rewards, prompts, kinds), [0.5, -0.5, 0.1, -0.1, 0.05, -0.05, 0.05, -0.05, 0.5, -0.5]
    )
    scales = AdvantageScales(query=2.0, relevant_document=1.0, negative_document=0.0)
    np.testing.assert_allclose(
        role_scaled_advantages(rewards, prompts, kinds, scales=scales), [1.0, -1.0, 0.5, -0.5, 0, 0, 0, 0, 1.0, -1.0]
    )
    with pytest.raises(DataError, match="kind"):
        role_scaled_advantages(rewards, prompts, ["query", "relevant", "negative", "query", "query"])
    with pytest.raises(DataError, match="prompt kinds"):
        role_scaled_advantages(rewards, prompts, kinds[:3])
    with pytest.raises(ConfigError):
        AdvantageScales(query=-1.0)


def test_background_documents_join_every_step_unexpanded_and_never_twice():
    b = builder()
    some_query = b.training_query_ids[0]
    ranked = {q: [f"d{i}" for i in range(40, 50)] for q in b.training_query_ids}
    ranked[some_query] = [d for d in b.qrels[some_query]] + ranked[some_query]
    with_background = builder(background=6, background_candidates=ranked)
    for step in range(4):
        plain, batch = b.build(step), with_background.build(step)
        background = [item for item in batch.items if item.kind == "background"]
        assert background and not any(item.expand for item in background)
        assert [i for i in batch.items if i.kind != "background"] == list(plain.items)  # groups unchanged
        doc_ids = [item.item_id for item in batch.documents]
        in_groups = {item.item_id for item in plain.documents}
        assert not {item.item_id for item in background} & in_groups
        assert len(set(doc_ids) - in_groups) == len(background)  # no background document twice
        assert batch.prompts == plain.prompts  # nothing more to generate
        for row, query in enumerate(batch.queries):  # relevance covers background documents too
            for column, doc in enumerate(batch.documents):
                assert batch.relevance[row, column] == max(b.qrels.get(query.item_id, {}).get(doc.item_id, 0), 0)
