"""Ranking metrics pinned to hand-computed values, and SQuAD answer metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from searchrl.errors import ConfigError, DataError
from searchrl.metrics import (
    evaluate_run,
    exact_match,
    normalize_answer,
    paired_difference,
    to_ir_measure,
    token_f1,
)

QRELS = {"q1": {"d1": 2, "d2": 1, "d3": 0}}
# Ranked d3, d1, d4, d2 by score; listed out of order to show that scores, not dict order, rank.
RUN = {"q1": {"d2": 0.1, "d4": 0.5, "d3": 0.9, "d1": 0.7}}


def test_ndcg_matches_a_hand_computation():
    # Linear gains (trec_eval/BEIR), discount log2(rank + 1):
    #   DCG  = 0/log2(2) + 2/log2(3) + 0/log2(4) + 1/log2(5)
    #   IDCG = 2/log2(2) + 1/log2(3)
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    idcg = 2 + 1 / math.log2(3)
    aggregate, per_query = evaluate_run(QRELS, RUN, ["ndcg@10"])
    assert aggregate["ndcg@10"] == pytest.approx(dcg / idcg) == pytest.approx(0.643322, abs=1e-6)
    assert per_query == {"q1": {"ndcg@10": pytest.approx(dcg / idcg)}}


def test_recall_mrr_map_and_cutoffs():
    aggregate, _ = evaluate_run(QRELS, RUN, ["recall@100", "mrr@10", "map", "ndcg@1", "recall@2", "p@2"])
    assert aggregate == pytest.approx(
        {
            "recall@100": 1.0,  # both relevant documents retrieved
            "mrr@10": 0.5,  # first relevant document at rank 2
            "map": (1 / 2 + 2 / 4) / 2,  # precision at ranks 2 and 4, over 2 relevant documents
            "ndcg@1": 0.0,  # rank 1 is judged non-relevant (relevance 0)
            "recall@2": 0.5,
            "p@2": 0.5,
        }
    )


def test_mrr_cutoff_is_applied():
    run = {"q1": {f"x{i}": 100.0 - i for i in range(10)} | {"d1": 1.0}}  # d1 at rank 11
    aggregate, _ = evaluate_run({"q1": {"d1": 1}}, run, ["mrr@10", "mrr", "recall@10"])
    assert aggregate == pytest.approx({"mrr@10": 0.0, "mrr": 1 / 11, "recall@10": 0.0})


def test_queries_without_results_count_as_zero():
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 1}}
    run = {"q1": {"d1": 1.0}, "q2": {}}  # q2 returned nothing, q3 is absent from the run
    aggregate, per_query = evaluate_run(qrels, run, ["ndcg@10", "recall@100", "mrr@10", "map"])
    assert set(per_query) == {"q1", "q2", "q3"}
    assert per_query["q2"] == per_query["q3"] == {"ndcg@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0, "map": 0.0}
    assert aggregate == pytest.approx({"ndcg@10": 1 / 3, "recall@100": 1 / 3, "mrr@10": 1 / 3, "map": 1 / 3})
    aggregate, per_query = evaluate_run(qrels, {}, ["ndcg@10"])
    assert aggregate == {"ndcg@10": 0.0} and len(per_query) == 3


def test_unjudged_queries_in_the_run_are_ignored_and_numpy_scores_work():
    run = {"q1": {"d1": np.float32(0.7), "d2": np.float64(0.9)}, "other": {"d1": 1.0}}
    aggregate, per_query = evaluate_run({"q1": {"d1": 1}}, run, ["mrr@10"])
    assert aggregate == {"mrr@10": 0.5} and set(per_query) == {"q1"}


def test_queries_with_only_non_relevant_judgments_are_skipped_with_a_warning():
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 0}}
    with pytest.warns(UserWarning, match="1 queries have no relevant document in the qrels and are not scored: q2"):
        aggregate, per_query = evaluate_run(qrels, {"q1": {"d1": 1.0}}, ["ndcg@10"])
    assert aggregate == {"ndcg@10": 1.0} and set(per_query) == {"q1"}


def test_measure_names_keep_the_given_spelling_in_lower_case():
    aggregate, _ = evaluate_run(QRELS, RUN, ["NDCG@10", "RR@10", "AP"])
    assert list(aggregate) == ["ndcg@10", "rr@10", "ap"]
    assert str(to_ir_measure("mrr@10")) == "RR@10" and str(to_ir_measure("map")) == "AP"
    assert str(to_ir_measure("recall@100")) == "R@100"


def test_unknown_measure_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown measure 'bleu@4'"):
        evaluate_run(QRELS, RUN, ["ndcg@10", "bleu@4"])


# --- answer metrics --------------------------------------------------------------------------


def test_normalize_answer_follows_squad():
    assert normalize_answer("The  Apollo-13 mission!") == "apollo13 mission"
    assert normalize_answer("An apple, a pear and THE end.") == "apple pear and end"
    assert normalize_answer("theory of another") == "theory of another"  # articles only as whole words


def test_exact_match_is_the_max_over_answers():
    assert exact_match("the Moon", ["moon", "lunar surface"]) == 1.0
    assert exact_match("lunar  surface.", ["moon", "Lunar surface"]) == 1.0
    assert exact_match("mars", ["moon", "lunar surface"]) == 0.0
    assert exact_match("moon", "The moon") == 1.0  # a single answer string is accepted
    assert exact_match("moon", []) == 0.0


def test_token_f1_is_the_max_over_answers():
    # "oxygen tank two" vs "oxygen tank": 2 shared tokens, precision 2/3, recall 1 -> F1 0.8
    assert token_f1("oxygen tank two", ["the oxygen tank"]) == pytest.approx(0.8)
    assert token_f1("oxygen tank two", ["fuel cell", "oxygen tank two"]) == 1.0
    assert token_f1("tank tank", ["tank"]) == pytest.approx(2 * 0.5 * 1 / 1.5)  # repeated tokens count once
    assert token_f1("mars", ["moon"]) == 0.0
    assert token_f1("", ["the"]) == 0.0  # an answer emptied by normalisation matches nothing empty
    assert token_f1("The", ["the"]) == 1.0  # but still matches itself
    assert token_f1("moon", []) == 0.0


def test_paired_difference_resamples_queries_and_counts_wins():
    rng = np.random.default_rng(1)
    baseline = {f"q{i}": float(v) for i, v in enumerate(rng.uniform(0, 1, 200))}
    shift = {q: v + 0.1 for q, v in baseline.items()}  # better on every query by 0.1
    d = paired_difference(baseline, shift)
    assert d["mean"] == pytest.approx(0.1) and d["low"] == pytest.approx(0.1) and d["high"] == pytest.approx(0.1)
    assert (d["better"], d["worse"], d["ties"], d["num_queries"]) == (200, 0, 0, 200)

    noisy = {q: v + float(rng.normal(0.02, 0.2)) for q, v in baseline.items()}
    d = paired_difference(baseline, noisy)
    diffs = np.array([noisy[q] - baseline[q] for q in baseline])
    standard_error = diffs.std(ddof=1) / np.sqrt(len(diffs))
    # the percentile interval of the mean is about mean +- 1.96 standard errors
    assert d["low"] == pytest.approx(diffs.mean() - 1.96 * standard_error, abs=0.01)
    assert d["high"] == pytest.approx(diffs.mean() + 1.96 * standard_error, abs=0.01)
    assert paired_difference(baseline, noisy) == d  # seeded: the same interval every time
    swapped = paired_difference(noisy, baseline)
    assert swapped["mean"] == pytest.approx(-d["mean"]) and (swapped["better"], swapped["worse"]) == (d["worse"], d["better"])
    narrower = paired_difference(baseline, noisy, confidence=0.5)
    assert d["low"] < narrower["low"] < narrower["high"] < d["high"]


def test_paired_difference_needs_the_same_queries():
    with pytest.raises(DataError, match="same queries"):
        paired_difference({"q1": 0.1, "q2": 0.2}, {"q1": 0.1, "q3": 0.2})
    with pytest.raises(DataError, match="at least one"):
        paired_difference({}, {})
