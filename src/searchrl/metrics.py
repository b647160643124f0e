"""Ranking metrics (nDCG, recall, MRR, MAP through ir-measures/pytrec_eval), answer metrics (EM, F1),
and the paired comparison of two systems on the same queries (a bootstrap interval, SciPy's).

Measures are named the way papers write them: ``"ndcg@10"``, ``"recall@100"``, ``"mrr@10"``,
``"map"``, ``"p@5"``. Any other ir-measures name (``"nDCG@10"``, ``"RR@10"``, ``"AP@100"``)
works too.
"""

from __future__ import annotations

import re
import string
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from searchrl.data.types import Qrels, Run
from searchrl.errors import ConfigError, DataError

DEFAULT_MEASURES = ("ndcg@10", "recall@100", "mrr@10", "map")

# Our spelling -> ir-measures measure name (the cutoff, if any, is carried over).
_ALIASES = {
    "ndcg": "nDCG",
    "recall": "R",
    "r": "R",
    "mrr": "RR",
    "rr": "RR",
    "map": "AP",
    "ap": "AP",
    "p": "P",
    "precision": "P",
    "success": "Success",
}
_MEASURE = re.compile(r"^\s*([a-z_]+)\s*(?:@\s*(\d+))?\s*$")


def to_ir_measure(name: str):
    """The ir-measures measure for ``name``: ``"mrr@10"`` -> ``RR@10``, ``"map"`` -> ``AP``.

    Raises :class:`ConfigError` for a name neither we nor ir-measures understand.
    """
    import ir_measures

    match = _MEASURE.match(name.lower())
    if match and match.group(1) in _ALIASES:
        base, cutoff = _ALIASES[match.group(1)], match.group(2)
        name_for_ir = base if cutoff is None else f"{base}@{int(cutoff)}"
    else:
        name_for_ir = name.strip()
    try:
        return ir_measures.parse_measure(name_for_ir)
    except Exception:
        raise ConfigError(
            f"unknown measure {name!r}",
            hint="use e.g. ndcg@10, recall@100, mrr@10, map, p@10 (or any ir-measures name)",
        ) from None


def evaluate_run(
    qrels: Qrels, run: Run, measures: Sequence[str] = DEFAULT_MEASURES
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Score ``run`` against ``qrels``; returns ``(aggregate, per_query)``.

    Keys are the measure names as given, lower-cased. Every query of ``qrels`` with at least
    one relevant document (relevance > 0) is scored; a query the run has no results for
    scores 0 rather than being left out of the average (which would inflate it). Queries of
    the run that ``qrels`` does not judge are ignored, and queries whose judgments are all
    non-relevant are skipped with a warning, since every measure is undefined for them. When
    no query at all can be scored, :class:`DataError` is raised rather than reporting 0.

    >>> qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    >>> aggregate, per_query = evaluate_run(qrels, {"q1": {"d1": 2.0, "d3": 1.0}}, ["mrr@10"])
    >>> aggregate, per_query["q2"]
    ({'mrr@10': 0.5}, {'mrr@10': 0.0})
    """
    import ir_measures

    keys = [m.strip().lower() for m in measures]
    if not keys:
        raise ConfigError("no measures given", hint="e.g. ndcg@10")
    parsed = {key: to_ir_measure(key) for key in dict.fromkeys(keys)}
    judged = {
        str(query_id): {str(doc_id): int(rel) for doc_id, rel in docs.items()}
        for query_id, docs in qrels.items()
        if any(int(rel) > 0 for rel in docs.values())
    }
    unanswerable = [query_id for query_id in qrels if str(query_id) not in judged]
    if not judged:
        raise DataError(
            f"no query can be scored: none of the {len(qrels)} judged queries has a relevant document",
            hint="the qrels must mark relevant documents with a relevance above 0",
        )
    if unanswerable:
        warnings.warn(
            f"{len(unanswerable)} queries have no relevant document in the qrels and are not scored: "
            f"{', '.join(map(str, unanswerable[:5]))}",
            stacklevel=2,
        )
    per_query: dict[str, dict[str, float]] = {query_id: dict.fromkeys(parsed, 0.0) for query_id in judged}
    # pytrec_eval wants plain str -> float; runs may carry NumPy scores.
    clean_run = {
        str(query_id): {str(doc_id): float(score) for doc_id, score in hits.items()}
        for query_id, hits in run.items()
        if str(query_id) in judged and hits
    }
    if clean_run:
        key_of = {measure: key for key, measure in parsed.items()}
        evaluator = ir_measures.evaluator(list(parsed.values()), judged)
        for metric in evaluator.iter_calc(clean_run):
            if metric.query_id in per_query:
                per_query[metric.query_id][key_of[metric.measure]] = float(metric.value)
    count = len(per_query)
    aggregate = {key: sum(scores[key] for scores in per_query.values()) / count for key in parsed}
    return aggregate, per_query


# --- answer metrics (the SQuAD v1.1 evaluation script's definitions) -------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, collapse whitespace (SQuAD).

    >>> normalize_answer("The  Apollo-13 mission!")
    'apollo13 mission'
    """
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _as_answers(answers: str | Iterable[str]) -> list[str]:
    return [answers] if isinstance(answers, str) else list(answers)


def _without_punctuation(s: str) -> str:
    return " ".join("".join(ch for ch in s.lower() if ch not in _PUNCTUATION).split())


def _comparable(prediction: str, answer: str) -> tuple[str, str] | None:
    """``(prediction, answer)`` normalised alike, or ``None`` when the answer leaves nothing to compare.

    An answer that SQuAD normalisation empties ("A", "The") is compared with articles kept, so
    it matches "a" but not every answer that also normalises to nothing; an answer of only
    punctuation can match nothing.
    """
    gold = normalize_answer(answer)
    if gold:
        return normalize_answer(prediction), gold
    gold = _without_punctuation(answer)
    if gold:
        return _without_punctuation(prediction), gold
    return None


def exact_match(prediction: str, answers: str | Iterable[str]) -> float:
    """1.0 when the normalised prediction equals any normalised gold answer, else 0.0.

    >>> exact_match("the Moon", ["moon", "lunar surface"]), exact_match("", ["The"]), exact_match("a", ["A"])
    (1.0, 0.0, 1.0)
    """
    pairs = (_comparable(prediction, answer) for answer in _as_answers(answers))
    return float(any(pair is not None and pair[0] == pair[1] for pair in pairs))


def _f1(predicted_tokens: list[str], gold_tokens: list[str]) -> float:
    if not predicted_tokens or not gold_tokens:
        return 0.0
    common = sum((Counter(predicted_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision = common / len(predicted_tokens)
    recall = common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, answers: str | Iterable[str]) -> float:
    """Best token-overlap F1 between the normalised prediction and any gold answer (SQuAD).

    >>> round(token_f1("oxygen tank two", ["the oxygen tank"]), 3), token_f1("", ["The"])
    (0.8, 0.0)
    """
    pairs = [_comparable(prediction, answer) for answer in _as_answers(answers)]
    scores = [_f1(pair[0].split(), pair[1].split()) for pair in pairs if pair is not None]
    return max(scores, default=0.0)


# --- paired comparison --------------------------------------------------------------------------


def paired_difference(
    baseline: Mapping[str, float], other: Mapping[str, float], *, confidence: float = 0.95,
    resamples: int = 10_000, seed: int = 0,
) -> dict[str, float | int]:
    """How ``other`` differs from ``baseline`` on the same queries: the mean per-query difference
    (``other - baseline``), a percentile bootstrap interval of it (resampling queries, as
    ``scipy.stats.bootstrap`` does), and on how many queries ``other`` is better, worse, or tied.

    Both map query ids to one score each and must hold the same queries. An interval that
    includes 0 means the evaluation set is too small to tell the two apart.

    >>> d = paired_difference({"q1": 0.5, "q2": 0.2, "q3": 0.0}, {"q1": 1.0, "q2": 0.2, "q3": 0.0})
    >>> round(d["mean"], 3), d["better"], d["worse"], d["ties"], d["num_queries"]
    (0.167, 1, 0, 2, 3)
    """
    import numpy as np
    from scipy.stats import bootstrap

    if set(baseline) != set(other):
        missing = sorted(set(baseline) ^ set(other))
        raise DataError(
            f"a paired comparison needs the same queries on both sides; {len(missing)} differ, e.g. {missing[:3]}"
        )
    if not baseline:
        raise DataError("a paired comparison needs at least one query")
    ids = sorted(baseline)
    diffs = np.array([float(other[q]) - float(baseline[q]) for q in ids])
    mean = float(diffs.mean())
    if len(diffs) < 2 or np.all(diffs == diffs[0]):  # nothing to resample: the interval is the point
        low = high = mean
    else:
        interval = bootstrap((diffs,), np.mean, confidence_level=confidence, n_resamples=resamples,
                             method="percentile", rng=np.random.default_rng(seed)).confidence_interval
        low, high = float(interval.low), float(interval.high)
    return {
        "mean": mean, "low": low, "high": high, "confidence": confidence,
        "better": int((diffs > 0).sum()), "worse": int((diffs < 0).sum()), "ties": int((diffs == 0).sum()),
        "num_queries": len(ids),
    }


__all__ = [
    "DEFAULT_MEASURES",
    "evaluate_run",
    "exact_match",
    "normalize_answer",
    "paired_difference",
    "to_ir_measure",
    "token_f1",
]

