"""In-batch scoring and the sampled co-augmentation reward."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from searchrl.coaug.bm25 import CorpusStatistics, InBatchBM25
from searchrl.coaug.reward import _pool_dcg, cosine_score_matrix, draw_picks, sampled_ndcg_rewards
from searchrl.data.types import Document
from searchrl.errors import DataError, IndexFileError

INV_LOG2_3 = 1 / math.log2(3)  # discount at rank 2 (0.63093); rank 1 -> 1, rank 3 -> 0.5


# --- a plain loop implementation, the specification the vectorised code must match -------------


def loop_reference(scores, query_prompt, doc_prompt, relevance, picks, *, k=10, weight=10.0, ties="pessimistic"):
    """nDCG@k per round and query sample, then query and document rewards, one pair at a time."""
    num_rounds, num_doc_prompts = picks.shape
    num_queries, num_docs = scores.shape
    ndcg = np.zeros((num_rounds, num_queries))
    numerator = np.zeros(num_docs)
    denominator = np.zeros(num_docs)
    for t in range(num_rounds):
        pool = [int(picks[t, p]) for p in range(num_doc_prompts)]
        for q in range(num_queries):
            grade = relevance[query_prompt[q]]

            def order(j):
                tie = grade[doc_prompt[j]] if ties == "pessimistic" else 0
                return (-scores[q, j], tie, doc_prompt[j], j)

            ranked = sorted(pool, key=order)
            dcg = sum(grade[doc_prompt[j]] / math.log2(r + 2) for r, j in enumerate(ranked[:k]))
            ideal = sorted((grade[doc_prompt[j]] for j in pool), reverse=True)[:k]
            idcg = sum(g / math.log2(r + 2) for r, g in enumerate(ideal))
            if idcg == 0:
                continue  # nDCG 0, and the row tells nothing about documents
            ndcg[t, q] = dcg / idcg
            for j in pool:
                w = 1 + weight * grade[doc_prompt[j]]
                numerator[j] += w * ndcg[t, q]
                denominator[j] += w
    with np.errstate(invalid="ignore"):
        doc_rewards = np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)
    return ndcg.mean(axis=0), doc_rewards, ndcg


# --- a case worked by hand ----------------------------------------------------------------------
# Query prompts q0, q1 with two samples each: query samples 0, 1 belong to q0; 2, 3 to q1.
# Document prompts d0, d1, d2 with two samples each: samples 0,1 -> d0; 2,3 -> d1; 4,5 -> d2.
# Relevance: q0 wants d0 (grade 1); q1 wants d1 (grade 2) and d2 (grade 1).
# Ideal DCG: q0 = 1; q1 = 2 + 1/log2(3) = 2.63093.
HAND_QUERY_PROMPT = np.array([0, 0, 1, 1])
HAND_DOC_PROMPT = np.array([0, 0, 1, 1, 2, 2])
HAND_RELEVANCE = np.array([[1, 0, 0], [0, 2, 1]])
HAND_SCORES = np.array(
    [
        [5.0, 1.0, 3.0, 2.0, 4.0, 0.0],
        [1.0, 5.0, 3.0, 2.0, 4.0, 0.0],
        [0.0, 0.0, 6.0, 1.0, 2.0, 9.0],
        [3.0, 3.0, 1.0, 2.0, 2.0, 9.0],
    ]
)
# Round 0 picks samples 0, 2, 4; round 1 picks 1, 3, 4. Sample 5 is never picked.
HAND_PICKS = np.array([[0, 2, 4], [1, 3, 4]])
IDCG_Q1 = 2 + INV_LOG2_3
# Round 0 (pool: d0 <- 0, d1 <- 2, d2 <- 4):
#   qs0: d0 5 > d2 4 > d1 3       -> relevant d0 at rank 1             -> nDCG 1
#   qs1: d2 4 > d1 3 > d0 1       -> d0 at rank 3: 0.5 / 1             -> nDCG 0.5
#   qs2: d1 6 > d2 2 > d0 0       -> gains 2, 1, 0 = ideal             -> nDCG 1
#   qs3: d0 3 > d2 2 > d1 1       -> gains 0, 1, 2: 1/log2(3) + 2 * 0.5 -> (0.63093 + 1) / 2.63093 = 0.619906
R0 = [1.0, 0.5, 1.0, (INV_LOG2_3 + 1.0) / IDCG_Q1]
# Round 1 (pool: d0 <- 1, d1 <- 3, d2 <- 4):
#   qs0: d2 4 > d1 2 > d0 1       -> d0 at rank 3                      -> nDCG 0.5
#   qs1: d0 5 > d2 4 > d1 2       -> d0 at rank 1                      -> nDCG 1
#   qs2: d2 2 > d1 1 > d0 0       -> gains 1, 2, 0: 1 + 2/log2(3)      -> (1 + 1.26186) / 2.63093 = 0.859719
#   qs3: d0 3, then d1 and d2 tie at 2. Pessimistic: the less relevant d2 (grade 1) goes first
#        -> gains 0, 1, 2, as in round 0; by index d1 goes first -> gains 0, 2, 1.
R1 = [0.5, 1.0, (1 + 2 * INV_LOG2_3) / IDCG_Q1, (INV_LOG2_3 + 1.0) / IDCG_Q1]
R1_QS3_BY_INDEX = (2 * INV_LOG2_3 + 0.5) / IDCG_Q1


def test_hand_case_query_rewards_are_mean_ndcg_over_rounds():
    result = sampled_ndcg_rewards(HAND_SCORES, HAND_QUERY_PROMPT, HAND_DOC_PROMPT, HAND_RELEVANCE, picks=HAND_PICKS)
    np.testing.assert_allclose(result.ndcg, [R0, R1])
    # qs0: (1 + 0.5) / 2; qs1: (0.5 + 1) / 2; qs2: (1 + 0.859719) / 2 = 0.929859; qs3: 0.619906 twice.
    np.testing.assert_allclose(result.query_rewards, [0.75, 0.75, 0.929859, 0.619906], atol=1e-6)
    np.testing.assert_array_equal(result.times_picked, [1, 1, 1, 1, 2, 0])


def test_hand_case_document_rewards_weight_rows_of_queries_they_are_relevant_to():
    result = sampled_ndcg_rewards(HAND_SCORES, HAND_QUERY_PROMPT, HAND_DOC_PROMPT, HAND_RELEVANCE, picks=HAND_PICKS)
    # Row weights (w = 10): d0: q0 rows 1 + 10*1 = 11, q1 rows 1  (per round 11+11+1+1 = 24)
    #                       d1: q0 rows 1, q1 rows 1 + 10*2 = 21   (per round 1+1+21+21 = 44)
    #                       d2: q0 rows 1, q1 rows 1 + 10*1 = 11   (per round 1+1+11+11 = 24)
    expected = [
        (11 * R0[0] + 11 * R0[1] + R0[2] + R0[3]) / 24,  # sample 0, round 0: 0.754996
        (11 * R1[0] + 11 * R1[1] + R1[2] + R1[3]) / 24,  # sample 1, round 1: 0.749151
        (R0[0] + R0[1] + 21 * R0[2] + 21 * R0[3]) / 44,  # sample 2, round 0: 0.807228
        (R1[0] + R1[1] + 21 * R1[2] + 21 * R1[3]) / 44,  # sample 3, round 1: 0.740276
        # sample 4, both rounds: (19.318969 + 17.775874) / 48
        (R0[0] + R0[1] + 11 * R0[2] + 11 * R0[3] + R1[0] + R1[1] + 11 * R1[2] + 11 * R1[3]) / 48,
    ]
    np.testing.assert_allclose(result.document_rewards[:5], expected)
    np.testing.assert_allclose(
        result.document_rewards[:5], [0.754996, 0.749151, 0.807228, 0.740276, 0.772809], atol=1e-6
    )
    assert np.isnan(result.document_rewards[5]), "a sample never picked has no reward"


def test_hand_case_index_tie_break_changes_only_the_tied_row():
    result = sampled_ndcg_rewards(
        HAND_SCORES, HAND_QUERY_PROMPT, HAND_DOC_PROMPT, HAND_RELEVANCE, picks=HAND_PICKS, ties="index"
    )
    np.testing.assert_allclose(result.ndcg, [R0, R1[:3] + [R1_QS3_BY_INDEX]])


def test_k_cuts_the_ranking():
    # k = 1: only the top document counts; the ideal DCG of q1 is 2 (its grade-2 document).
    result = sampled_ndcg_rewards(
        HAND_SCORES, HAND_QUERY_PROMPT, HAND_DOC_PROMPT, HAND_RELEVANCE, picks=HAND_PICKS, k=1
    )
    # Round 0 tops: qs0 d0 (1/1), qs1 d2 (0), qs2 d1 (2/2), qs3 d0 (0).
    # Round 1 tops: qs0 d2 (0), qs1 d0 (1), qs2 d2 (1/2), qs3 d0 (0).
    np.testing.assert_allclose(result.ndcg, [[1, 0, 1, 0], [0, 1, 0.5, 0]])


def test_query_without_relevant_document_gets_zero_and_leaves_document_rewards_alone():
    base = sampled_ndcg_rewards(HAND_SCORES, HAND_QUERY_PROMPT, HAND_DOC_PROMPT, HAND_RELEVANCE, picks=HAND_PICKS)
    # Add a third query prompt q2 (one sample) for which no document in the pool is relevant.
    scores = np.vstack([HAND_SCORES, [9.0, 8.0, 7.0, 6.0, 5.0, 4.0]])
    relevance = np.vstack([HAND_RELEVANCE, [0, 0, 0]])
    result = sampled_ndcg_rewards(scores, np.array([0, 0, 1, 1, 2]), HAND_DOC_PROMPT, relevance, picks=HAND_PICKS)
    assert result.query_rewards[4] == 0.0
    np.testing.assert_allclose(result.query_rewards[:4], base.query_rewards)
    np.testing.assert_allclose(result.document_rewards, base.document_rewards)


def test_pessimistic_ties_pay_nothing_for_matching_nothing():
    # All scores 0, relevant document listed first: a stable sort would rank it first.
    scores = np.zeros((1, 3))
    result = sampled_ndcg_rewards(scores, np.array([0]), np.array([0, 1, 2]), np.array([[1, 0, 0]]), rounds=2, seed=0)
    assert result.query_rewards[0] == pytest.approx(0.5)  # relevant at the last rank (3): 0.5 / 1
    by_index = sampled_ndcg_rewards(
        scores, np.array([0]), np.array([0, 1, 2]), np.array([[1, 0, 0]]), rounds=2, seed=0, ties="index"
    )
    assert by_index.query_rewards[0] == pytest.approx(1.0)


def test_docstring_example_numbers():
    scores = np.array([[3.0, 2.0, 1.0, 0.5], [3.0, 2.0, 1.0, 0.5]])
    result = sampled_ndcg_rewards(scores, np.array([0, 1]), np.array([0, 0, 1, 1]), np.eye(2), rounds=8, seed=0)
    np.testing.assert_allclose(result.query_rewards, [1.0, INV_LOG2_3])
    # Document 0's samples sit in rows with nDCG 1 (weight 11) and 1/log2(3) (weight 1).
    np.testing.assert_allclose(result.document_rewards[:2], (11 + INV_LOG2_3) / 12)
    np.testing.assert_allclose(result.document_rewards[2:], (1 + 11 * INV_LOG2_3) / 12)


# --- vectorised == loop on random cases ---------------------------------------------------------


def random_case(rng, *, num_query_prompts, num_doc_prompts, max_samples, tie_heavy):
    query_counts = rng.integers(1, max_samples + 1, num_query_prompts)
    doc_counts = rng.integers(1, max_samples + 1, num_doc_prompts)
    query_prompt = rng.permutation(np.repeat(np.arange(num_query_prompts), query_counts))
    doc_prompt = rng.permutation(np.repeat(np.arange(num_doc_prompts), doc_counts))
    relevance = rng.choice([0, 0, 0, 1, 2, 3], size=(num_query_prompts, num_doc_prompts))
    relevance[0] = 0  # one query prompt with nothing relevant
    if tie_heavy:
        scores = rng.integers(0, 3, (len(query_prompt), len(doc_prompt))).astype(float)
    else:
        shape = (len(query_prompt), len(doc_prompt))
        scores = rng.gamma(1.0, 2.0, shape) * (rng.random(shape) < 0.6)
    return scores, query_prompt, doc_prompt, relevance


@pytest.mark.parametrize("seed", range(12))
def test_vectorised_matches_loop_reference(seed):
    rng = np.random.default_rng(seed)
    scores, query_prompt, doc_prompt, relevance = random_case(
        rng,
        num_query_prompts=int(rng.integers(2, 5)),
        num_doc_prompts=int(rng.integers(3, 25)),
        max_samples=int(rng.integers(1, 5)),
        tie_heavy=seed % 2 == 0,
    )
    k = [1, 3, 10][seed % 3]
    ties = ["pessimistic", "index"][seed % 4 // 2]
    picks = draw_picks(doc_prompt, rounds=7, seed=seed, num_doc_prompts=relevance.shape[1])
    result = sampled_ndcg_rewards(scores, query_prompt, doc_prompt, relevance, picks=picks, k=k, ties=ties)
    query_expected, doc_expected, ndcg_expected = loop_reference(
        scores, query_prompt, doc_prompt, relevance, picks, k=k, ties=ties
    )
    np.testing.assert_allclose(result.ndcg, ndcg_expected, atol=1e-12)
    np.testing.assert_allclose(result.query_rewards, query_expected, atol=1e-12)
    np.testing.assert_allclose(result.document_rewards, doc_expected, atol=1e-12)  # NaNs in the same places


def test_walk_falls_back_to_full_ranking_when_the_window_is_short():
    rng = np.random.default_rng(5)
    scores, query_prompt, doc_prompt, relevance = random_case(
        rng, num_query_prompts=3, num_doc_prompts=30, max_samples=4, tie_heavy=False
    )
    picks = draw_picks(doc_prompt, rounds=9, seed=1)
    picked = np.zeros((len(doc_prompt), 9), dtype=bool)  # [samples, rounds]
    picked[picks, np.arange(9)[:, None]] = True
    gains = relevance[query_prompt][:, doc_prompt].astype(float)
    ranking = np.argsort(-scores, axis=1, kind="stable")
    full = _pool_dcg(picked, ranking, gains, k=10, max_depth=len(doc_prompt))
    for depth in (1, 5, 17):
        np.testing.assert_allclose(_pool_dcg(picked, ranking, gains, k=10, max_depth=depth), full)


def test_unexpanded_documents_are_single_sample_prompts():
    # Query mode: each document prompt is one unexpanded sample, so every pool is identical.
    rng = np.random.default_rng(0)
    scores = rng.random((4, 6))
    relevance = rng.integers(0, 2, (2, 6))
    result = sampled_ndcg_rewards(scores, np.array([0, 0, 1, 1]), np.arange(6), relevance, rounds=5, seed=3)
    assert (result.ndcg == result.ndcg[0]).all()
    assert (result.times_picked == 5).all()


# --- picks -----------------------------------------------------------------------------------------


def test_draw_picks_one_sample_of_each_prompt_uniformly_and_reproducibly():
    doc_prompt = np.array([2, 0, 1, 0, 2, 2, 1, 0, 0])  # prompt 0 has 4 samples, 1 has 2, 2 has 3
    picks = draw_picks(doc_prompt, rounds=4000, seed=11)
    assert picks.shape == (4000, 3)
    assert (doc_prompt[picks] == np.arange(3)).all()
    np.testing.assert_array_equal(picks, draw_picks(doc_prompt, rounds=4000, seed=11))
    frequency = np.bincount(picks.ravel(), minlength=9) / 4000
    expected = np.array([1 / 3, 1 / 4, 1 / 2, 1 / 4, 1 / 3, 1 / 3, 1 / 2, 1 / 4, 1 / 4])
    np.testing.assert_allclose(frequency, expected, atol=0.03)


def test_seeded_rewards_are_reproducible():
    rng = np.random.default_rng(1)
    scores, query_prompt, doc_prompt, relevance = random_case(
        rng, num_query_prompts=3, num_doc_prompts=8, max_samples=3, tie_heavy=False
    )
    a = sampled_ndcg_rewards(scores, query_prompt, doc_prompt, relevance, rounds=16, seed=4)
    b = sampled_ndcg_rewards(scores, query_prompt, doc_prompt, relevance, rounds=16, seed=4)
    np.testing.assert_array_equal(a.picks, b.picks)
    np.testing.assert_array_equal(a.query_rewards, b.query_rewards)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(scores=np.ones((4, 5))), "shape"),
        (dict(scores=np.where(np.eye(4, 6) > 0, np.nan, 1.0)), "NaN"),
        (dict(relevance=-HAND_RELEVANCE), "non-negative"),
        (dict(doc_prompt=np.array([0, 0, 2, 2, 2, 2])), "no sample"),
        (dict(query_prompt=np.array([0, 0, 1, 2])), "out of range"),
        (dict(picks=np.array([[1, 0, 4]])), "not 1"),
        (dict(picks=np.array([[0, 2]])), "shape"),
        (dict(query_prompt=np.array([0.0, 0.0, 1.0, 1.0])), "integer"),
    ],
)
def test_bad_input_raises_data_error(change, message):
    args = dict(
        scores=HAND_SCORES,
        query_prompt=HAND_QUERY_PROMPT,
        doc_prompt=HAND_DOC_PROMPT,
        relevance=HAND_RELEVANCE,
        picks=HAND_PICKS,
    )
    args.update(change)
    with pytest.raises(DataError, match=message):
        sampled_ndcg_rewards(
            args["scores"], args["query_prompt"], args["doc_prompt"], args["relevance"], picks=args["picks"]
        )


# --- BM25 -----------------------------------------------------------------------------------------


def test_bm25_hand_computed_score():
    # N = 10 documents, avgdl = 4; df(cell) = 4, df(growth) = 1, "zzz" unseen (treated as df 1).
    stats = CorpusStatistics(10, 4.0, {"cell": 4, "growth": 1})
    bm25 = InBatchBM25(stats, k1=1.2, b=0.75, unseen="rare")
    idf_cell = math.log(1 + (10 - 4 + 0.5) / (4 + 0.5))  # 0.89382
    idf_growth = math.log(1 + (10 - 1 + 0.5) / (1 + 0.5))  # 1.99243
    # Document "cell cell growth other other other" (length 6): norm = 1.2 * (0.25 + 0.75 * 6/4) = 1.65.
    norm = 1.2 * (1 - 0.75 + 0.75 * 6 / 4)
    doc = ["cell", "cell", "growth", "other", "other", "other"]
    # Query "cell growth cell zzz": cell counts twice, zzz is absent from the document.
    expected = 2 * idf_cell * 2 / (2 + norm) + idf_growth * 1 / (1 + norm)
    scores = bm25.score_tokens([["cell", "growth", "cell", "zzz"], ["other"], []], [doc, []])
    assert scores.shape == (3, 2)
    assert scores[0, 0] == pytest.approx(expected, rel=1e-12)  # 2.6698
    assert scores[0, 1] == 0.0 and (scores[2] == 0).all()
    # "other" is in no corpus document: df 1, like growth.
    assert scores[1, 0] == pytest.approx(idf_growth * 3 / (3 + norm))


def test_bm25_pays_nothing_for_words_no_corpus_document_contains_by_default():
    # CoAug's rule: an unseen word has IDF 0, so a query and a document that agree on an
    # invented word score exactly as if the word were absent.
    stats = CorpusStatistics(10, 4.0, {"cell": 4})
    bm25 = InBatchBM25(stats)
    with_invented = bm25.score_tokens([["cell", "zzzword"]], [["cell", "zzzword"], ["cell", "other"]])
    assert with_invented[0, 0] == pytest.approx(with_invented[0, 1])
    assert bm25.score_tokens([["zzzword"]], [["zzzword"]])[0, 0] == 0.0
    rare = InBatchBM25(stats, unseen="rare").score_tokens([["zzzword"]], [["zzzword"]])
    assert rare[0, 0] > 0


def test_bm25_matches_bm25s_lucene_on_the_corpus_it_indexes():
    bm25s = pytest.importorskip("bm25s")
    corpus = [
        "vitamin bone fractur elder",
        "aspirin heart attack risk risk",
        "bone densiti vitamin calcium supplement trial",
        "heart failur mortal",
        "cell growth tumor suppressor gene",
        "tumor cell apoptosi",
        "vitamin vitamin vitamin",
        "calcium",
    ]
    tokens = [text.split() for text in corpus]
    queries = [["vitamin", "bone"], ["heart", "risk", "heart"], ["tumor", "cell", "gene", "calcium"]]
    index = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
    index.index(tokens, show_progress=False)
    expected = np.array([index.get_scores(q) for q in queries])
    ours = InBatchBM25(CorpusStatistics.from_tokens(tokens)).score_tokens(queries, tokens)
    np.testing.assert_allclose(ours, expected, rtol=1e-5)


def test_expanded_scoring_equals_scoring_the_concatenation():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(30)]
    stats = CorpusStatistics(50, 6.0, {w: int(rng.integers(1, 50)) for w in words[:20]})
    bm25 = InBatchBM25(stats)
    base = [rng.choice(words, 8).tolist() for _ in range(4)]
    expansions = [rng.choice(words, int(rng.integers(0, 5))).tolist() for _ in range(10)]
    base_of_doc = rng.integers(0, 4, 10)
    queries = [rng.choice(words, 5).tolist() for _ in range(3)]
    combined = [base[b] + e for b, e in zip(base_of_doc, expansions)]
    np.testing.assert_allclose(
        bm25.score_expanded_tokens(queries, base, expansions, base_of_doc), bm25.score_tokens(queries, combined)
    )
    with pytest.raises(DataError):
        bm25.score_expanded_tokens(queries, base, expansions, base_of_doc[:-1])


def test_bm25_scores_raw_texts_with_the_evaluation_analyzer():
    analyzer_module = pytest.importorskip("searchrl.retrieval.bm25")
    analyzer = analyzer_module.BM25Analyzer()
    docs = [Document("a", "Vitamin D deficiency and bone fractures", "Bones"), Document("b", "Aspirin and the heart")]
    stats = CorpusStatistics.from_documents(docs, analyzer=analyzer)
    bm25 = InBatchBM25(stats, analyzer=analyzer)
    scores = bm25.score(["vitamin deficiencies", "hearts"], ["Bones Vitamin D deficiency", "Aspirin and the heart"])
    assert scores[0, 0] > 0 and scores[0, 1] == 0
    assert scores[1, 1] > 0 and scores[1, 0] == 0
    np.testing.assert_allclose(
        scores, bm25.score_tokens(analyzer.tokenize(["vitamin deficiencies", "hearts"]),
                                  analyzer.tokenize(["Bones Vitamin D deficiency", "Aspirin and the heart"]))
    )


def test_corpus_statistics_from_documents_count_title_body_and_expansion():
    docs = [Document("a", "x y", "t"), Document("b", "y")]
    stats = CorpusStatistics.from_documents(docs, analyzer=_SplitAnalyzer(), doc_expansions={"b": "z z"})
    assert stats.num_documents == 2
    assert stats.average_length == pytest.approx((3 + 3) / 2)  # "t x y" and "y z z"
    assert dict(stats.document_frequency) == {"t": 1, "x": 1, "y": 2, "z": 1}


def test_corpus_statistics_round_trip_and_bad_files(tmp_path):
    stats = CorpusStatistics(3, 2.5, {"a": 1, "b": 3})
    path = tmp_path / "stats.json"
    stats.save(path)
    loaded = CorpusStatistics.load(path)
    assert (loaded.num_documents, loaded.average_length, dict(loaded.document_frequency)) == (3, 2.5, {"a": 1, "b": 3})
    with pytest.raises(IndexFileError, match="not found"):
        CorpusStatistics.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(IndexFileError, match="cannot read"):
        CorpusStatistics.load(tmp_path / "bad.json")
    payload = json.loads(path.read_text())
    payload["num_documents"] = 0
    (tmp_path / "empty.json").write_text(json.dumps(payload))
    with pytest.raises(IndexFileError):
        CorpusStatistics.load(tmp_path / "empty.json")


def test_corpus_statistics_from_an_indexed_bm25_retriever():
    retrieval = pytest.importorskip("searchrl.retrieval.bm25")
    docs = [Document("a", "cell growth"), Document("b", "cell cell division")]
    retriever = retrieval.BM25Retriever().index(docs, show_progress=False)
    stats = CorpusStatistics.from_retriever(retriever)
    expected = CorpusStatistics.from_documents(docs, analyzer=retriever.analyzer)
    assert stats.num_documents == 2
    assert stats.average_length == pytest.approx(expected.average_length)
    assert dict(stats.document_frequency) == dict(expected.document_frequency)


def test_cosine_scores():
    queries = np.array([[3.0, 4.0], [0.0, 0.0]])
    docs = np.array([[6.0, 8.0], [-4.0, 3.0], [1.0, 0.0]])
    np.testing.assert_allclose(cosine_score_matrix(queries, docs), [[1.0, 0.0, 0.6], [0.0, 0.0, 0.0]], atol=1e-12)
    with pytest.raises(DataError, match="dimension"):
        cosine_score_matrix(queries, np.ones((2, 3)))


class _SplitAnalyzer:
    def tokenize(self, texts):
        return [text.split() for text in texts]


def test_bad_options_raise_config_error():
    from searchrl.errors import ConfigError

    args = (HAND_SCORES, HAND_QUERY_PROMPT, HAND_DOC_PROMPT, HAND_RELEVANCE)
    for options in (dict(k=0), dict(ties="random"), dict(relevant_weight=-1.0), dict(rounds=0)):
        with pytest.raises(ConfigError):
            sampled_ndcg_rewards(*args, **options)


def test_missing_rewards_become_none_for_trl():
    from searchrl.coaug.reward import as_reward_list

    result = sampled_ndcg_rewards(HAND_SCORES, HAND_QUERY_PROMPT, HAND_DOC_PROMPT, HAND_RELEVANCE, picks=HAND_PICKS)
    rewards = as_reward_list(result.document_rewards)
    assert rewards[5] is None and all(isinstance(r, float) for r in rewards[:5])


# --- CoAug fidelity: one pool slot per distinct document -------------------------------------------


def test_a_document_drawn_twice_is_one_pool_slot_when_merged():
    from searchrl.coaug.reward import merge_duplicate_documents

    # Query 0's relevant document "d" was drawn twice (columns 0 and 1); "n" is a negative.
    # Samples: s0 of column 0, s1 of column 1, s2 of column 2. The query sample ranks s0 > s2 > s1.
    scores = np.array([[3.0, 1.0, 2.0]])
    relevance = np.array([[1, 1, 0]])
    owner = np.array([0, 1, 2])
    # Two slots for "d": every pool holds s0, s1 and s2; DCG 1 + 1/log2(4) over an ideal 1 + 1/log2(3).
    split = sampled_ndcg_rewards(scores, np.array([0]), owner, relevance, picks=np.array([[0, 1, 2], [0, 1, 2]]))
    assert split.query_rewards[0] == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    # One slot: a round holds s0 or s1 (plus s2); ideal DCG 1.
    merged_relevance, merged_owner = merge_duplicate_documents(["d", "d", "n"], relevance, owner)
    assert merged_relevance.tolist() == [[1, 0]] and merged_owner.tolist() == [0, 0, 1]
    merged = sampled_ndcg_rewards(
        scores, np.array([0]), merged_owner, merged_relevance, picks=np.array([[0, 2], [1, 2]])
    )
    assert merged.ndcg[:, 0].tolist() == pytest.approx([1.0, 1 / math.log2(3)])
    assert merged.query_rewards[0] == pytest.approx((1 + 1 / math.log2(3)) / 2)


def test_group_spread_metrics_count_tied_groups_per_role():
    from searchrl.coaug.reward import group_spread_metrics

    rewards = np.array([0.4, 0.4, 0.1, 0.9, np.nan, 0.3, 0.3, 0.3])
    prompt = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    metrics = group_spread_metrics(rewards, prompt, ["query", "query", "document", "document"])
    # prompt 2 has one finite reward only: no spread to measure.
    assert metrics["coaug/frac_zero_std_groups"] == pytest.approx(2 / 3)
    assert metrics["coaug/frac_zero_std_groups_query"] == pytest.approx(0.5)
    assert metrics["coaug/reward_std_within_group_query"] == pytest.approx(0.2)
    assert metrics["coaug/frac_zero_std_groups_document"] == 1.0


def test_reward_and_dev_evaluation_weight_the_query_by_query_repeat():
    # The relevant document matches the query; the expansion points at a filler document. Held once,
    # the query loses to its expansion (reward < 1); held three times it ranks its document first.
    from searchrl.augment import ExpansionPolicy
    from searchrl.coaug.batch import CoAugBatchBuilder
    from searchrl.coaug.evaluate import BatchScorer, DevEvaluator
    from searchrl.coaug.reward import CoAugReward

    corpus = {f"d{i}": Document(f"d{i}", f"filler text number {i}") for i in range(6)}
    corpus["d0"] = Document("d0", "vitamin d deficiency and bone fractures")
    corpus["d1"] = Document("d1", "calcium intake milk dairy products")
    queries, qrels = {"q1": "vitamin bone"}, {"q1": {"d0": 1}}
    stats = CorpusStatistics.from_documents(corpus.values())
    wrong = " calcium milk dairy products intake</answer>"
    rewards, dev = {}, {}
    for repeat in (1, 3):
        builder = CoAugBatchBuilder(corpus, queries, qrels, mode="query", queries_per_step=1, group_size=3,
                                    relevant_per_query=1, background=5, background_candidates={"q1": ["d1", "d2"]})
        scorer = BatchScorer("bm25", statistics=stats, query_repeat=repeat)
        reward = CoAugReward(builder, ExpansionPolicy(), scorer, samples_per_prompt=2, rounds=4)
        rewards[repeat] = reward(prompts=[None, None], completions=[wrong, wrong], step=[0, 0], prompt_index=[0, 0],
                                 role=["query"] * 2, kind=["query"] * 2, item_id=["q1", "q1"], group=[0, 0])
        evaluator = DevEvaluator.build(corpus, queries, qrels, scorer, ExpansionPolicy(), mode="query", candidate_docs=None)
        dev[repeat] = evaluator._rank({"q1": "calcium milk dairy products intake"}, {})["mrr@10"]
    assert rewards[1][0] < 1.0 and rewards[3] == [1.0, 1.0]
    assert dev == {1: 0.5, 3: 1.0}


def test_a_corpus_wide_pool_charges_expansions_for_the_documents_they_pull_up():
    # An expansion of words only an off-topic document contains moves that document above the
    # relevant one over the whole corpus (as evaluation ranks), but not inside a pool made of the
    # query's own unexpanded top documents: only the corpus-wide pool charges for it.
    from searchrl.augment import ExpansionPolicy
    from searchrl.coaug.batch import CoAugBatchBuilder
    from searchrl.coaug.evaluate import BatchScorer
    from searchrl.coaug.reward import CoAugReward

    corpus = {f"d{i}": Document(f"d{i}", f"filler text number {i}") for i in range(2, 8)}
    corpus["d0"] = Document("d0", "vitamin d deficiency and bone fractures")
    corpus["d1"] = Document("d1", "a list of synonyms and related concepts")
    queries, qrels = {"q1": "vitamin bone"}, {"q1": {"d0": 1}}
    scorer = BatchScorer("bm25", statistics=CorpusStatistics.from_documents(corpus.values()))
    filler = " list of synonyms related concepts list synonyms</answer>"
    rewards = {}
    for name, options in (("own top documents", {"background": 3, "background_candidates": {"q1": ["d0"]}}),
                          ("whole corpus", {"background_corpus": True})):
        builder = CoAugBatchBuilder(corpus, queries, qrels, mode="query", queries_per_step=1, group_size=2,
                                    relevant_per_query=1, **options)
        batch = builder.build(0)
        pool = sorted(item.item_id for item in batch.documents)
        if name == "whole corpus":
            assert pool == sorted(corpus)  # every document once, unexpanded, in no query's group
            assert all(not i.expand and i.group == -1 for i in batch.documents if i.kind == "background")
        reward = CoAugReward(builder, ExpansionPolicy(), scorer, samples_per_prompt=2, rounds=4)
        rewards[name] = reward(prompts=[None, None], completions=[filler, filler], step=[0, 0], prompt_index=[0, 0],
                               role=["query"] * 2, kind=["query"] * 2, item_id=["q1", "q1"], group=[0, 0])
    assert rewards["own top documents"] == [1.0, 1.0]
    assert rewards["whole corpus"][0] < 1.0


def test_bm25_analyses_a_repeated_document_text_once_and_scores_the_same():
    stats = CorpusStatistics.from_documents([Document("d1", "vitamin d and bone"), Document("d2", "heart attack")])
    bm25 = InBatchBM25(stats)
    analysed = []
    tokenize = bm25.analyzer.tokenize
    bm25.analyzer.tokenize = lambda texts: analysed.extend(texts) or tokenize(texts)
    docs = ["vitamin d and bone", "heart attack", "vitamin d and bone"]
    first = bm25.score(["bone vitamin"], docs)
    again = bm25.score(["heart"], docs)
    assert [t for t in analysed if t in docs] == ["vitamin d and bone", "heart attack"]
    assert first[0, 0] == first[0, 2] > first[0, 1] and again[0, 1] > again[0, 0]
    assert np.array_equal(first, InBatchBM25(stats).score(["bone vitamin"], docs))
