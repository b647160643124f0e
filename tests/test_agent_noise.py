"""Search tool and its noise: schedules, corrupted results, random backends, distractors, failures."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from searchrl.agent import tool as tool_module
from searchrl.agent.noise import (
    NoiseConfig,
    ProbabilitySchedule,
    call_rng,
    corrupt_results,
    load_distractors,
    with_distractors,
)
from searchrl.agent.tool import SearchTool, SearchToolConfig, build_search_tool, format_results
from searchrl.data.types import Document
from searchrl.errors import DataError, ToolError
from searchrl.retrieval.base import Retriever


class KeywordRetriever(Retriever):
    """Scores a document by how many query words it contains; ties broken by corpus order."""

    name = "keyword"

    def __init__(self, fail: bool = False, invent_ids: bool = False) -> None:
        self.fail, self.invent_ids, self.docs = fail, invent_ids, []

    def index(self, documents, doc_expansions=None, *, show_progress=True):
        self.docs = list(documents)
        return self

    def search(self, queries, k=10, *, show_progress=False):
        if self.fail:
            raise RuntimeError("index file vanished")
        out = []
        for query in queries:
            words = set(query.lower().split())
            scored = [(d.id, float(len(words & set(d.text.lower().split())))) for d in self.docs]
            scored.sort(key=lambda hit: -hit[1])
            out.append([("ghost", 1.0)] if self.invent_ids else scored[:k])
        return out

    def save(self, directory):
        raise NotImplementedError

    @classmethod
    def load(cls, directory):
        raise NotImplementedError

    @property
    def doc_ids(self):
        return [d.id for d in self.docs]


CORPUS = {f"c{i}": Document(f"c{i}", f"passage {i} about topic{i} and shared words") for i in range(40)}


def keyword_tool(**options) -> SearchTool:
    return SearchTool(KeywordRetriever().index(CORPUS.values()), CORPUS, k=5, **options)


def test_schedules():
    assert ProbabilitySchedule.constant(0.3).at(0) == ProbabilitySchedule.constant(0.3).at(10**6) == 0.3
    ramp = ProbabilitySchedule.linear(0.1, 0.5, steps=100)
    assert [ramp.at(s) for s in (0, 50, 100, 500)] == [0.1, 0.3, 0.5, 0.5]
    steps = ProbabilitySchedule.stepwise([10, 20], [0.0, 0.2, 0.4])
    assert [steps.at(s) for s in (0, 9, 10, 19, 20, 99)] == [0.0, 0.0, 0.2, 0.2, 0.4, 0.4]
    config = NoiseConfig.model_validate({"replace_prob": 0.2, "drop_prob": {"kind": "linear", "end": 0.5, "steps": 10}})
    assert config.replace_prob.at(3) == 0.2 and config.drop_prob.at(5) == 0.25


@pytest.mark.parametrize(
    "spec",
    [{"kind": "step", "milestones": [5], "values": [0.1]}, {"kind": "step", "milestones": [5, 3], "values": [0, 0, 0]},
     1.5, {"kind": "constant", "value": 0.1, "typo": 1}],
)
def test_invalid_schedules_are_rejected(spec):
    with pytest.raises(ValidationError):
        ProbabilitySchedule.model_validate(spec)


def test_no_noise_leaves_results_untouched():
    ids, applied = corrupt_results(["a", "b", "c"], ["a", "b", "c", "d"], NoiseConfig(), step=0, rng=call_rng(0, 0, "k"))
    assert ids == ["a", "b", "c"] and applied == []


def test_each_corruption_at_probability_one():
    pool = [f"c{i}" for i in range(40)]
    results = ["c0", "c1", "c2", "c3", "c4"]
    replaced, applied = corrupt_results(results, pool, NoiseConfig(replace_prob=1.0), step=0, rng=call_rng(1, 0, "k"))
    assert len(replaced) == 5 and not set(replaced) & set(results) and len(applied) == 5
    shuffled, applied = corrupt_results(results, pool, NoiseConfig(shuffle_prob=1.0), step=0, rng=call_rng(3, 0, "k"))
    assert sorted(shuffled) == results and applied == ["shuffled"]
    dropped, applied = corrupt_results(results, pool, NoiseConfig(drop_prob=1.0), step=0, rng=call_rng(1, 0, "k"))
    assert dropped == [] and applied == ["dropped c0, c1, c2, c3, c4"]


def test_a_failed_call_replaces_every_result_and_records_what_the_query_found():
    pool = [f"c{i}" for i in range(40)]
    results = ["c0", "c1", "c2", "c3", "c4"]
    failed, applied = corrupt_results(results, pool, NoiseConfig(fail_prob=1.0, shuffle_prob=1.0), step=0, rng=call_rng(1, 0, "k"))
    assert len(failed) == 5 and len(set(failed)) == 5 and not set(failed) & set(results)
    assert len(applied) == 1 and applied[0].startswith("failed: every result replaced (c0 -> ")  # nothing else is done
    # through the tool: the record keeps what the query found before the noise, and only then
    tool = keyword_tool(noise=NoiseConfig(fail_prob=1.0))
    result = tool.search("topic3 shared", key="q1#0:1")
    assert "c3" in result.before_noise and "c3" not in result.doc_ids
    assert result.to_dict()["before_noise"] == list(result.before_noise)
    clean = keyword_tool().search("topic3 shared", key="q1#0:1")
    assert clean.before_noise is None and "before_noise" not in clean.to_dict()  # noiseless records are unchanged


def test_fail_probability_leaves_the_other_options_random_streams_alone():
    pool = [f"c{i}" for i in range(40)]
    config = NoiseConfig(replace_prob=0.5, shuffle_prob=0.5, drop_prob=0.3)
    with_fail = config.model_copy(update={"fail_prob": ProbabilitySchedule.constant(0.3)})
    outcomes = {"same": 0, "failed": 0}
    for i in range(300):
        plain = corrupt_results(pool[:5], pool, config, step=0, rng=call_rng(0, 0, f"q{i}"))
        noisy = corrupt_results(pool[:5], pool, with_fail, step=0, rng=call_rng(0, 0, f"q{i}"))
        if noisy[1] and noisy[1][0].startswith("failed"):
            outcomes["failed"] += 1
        else:
            assert noisy == plain  # a call that did not fail is noised exactly as without the option
            outcomes["same"] += 1
    assert abs(outcomes["failed"] / 300 - 0.3) < 0.07


def test_corruption_rate_follows_the_probability_and_schedule():
    pool = [f"c{i}" for i in range(40)]
    ramp = NoiseConfig(replace_prob=ProbabilitySchedule.linear(0.0, 0.4, steps=10))
    counts = {}
    for step in (0, 5, 10):
        counts[step] = sum(
            len(corrupt_results(pool[:5], pool, ramp, step=step, rng=call_rng(0, step, f"q{i}"))[1]) for i in range(400)
        ) / 2000
    assert counts[0] == 0.0
    assert abs(counts[5] - 0.2) < 0.04 and abs(counts[10] - 0.4) < 0.04


def test_noise_is_seeded_by_seed_step_and_key_not_by_batch():
    config = NoiseConfig(replace_prob=0.5, shuffle_prob=0.5)
    tool = keyword_tool(noise=config, seed=7)
    alone = tool.search("topic3 shared", step=2, key="q1#0:1")
    batched = tool.search_batch(["other words", "topic3 shared"], step=2, keys=["zz", "q1#0:1"])[1]
    assert alone == batched
    draws = {tuple(tool.search("topic3 shared", step=2, key=f"q1#{n}:1").doc_ids) for n in range(10)}
    assert len(draws) > 1  # different samples of the same question see different noise
    assert alone == keyword_tool(noise=config, seed=7).search("topic3 shared", step=2, key="q1#0:1")  # a fresh tool agrees
    assert alone.noise  # what was done is recorded


def test_random_backend_per_call_is_recorded():
    retrievers = {"first": KeywordRetriever().index(CORPUS.values()), "second": KeywordRetriever().index(CORPUS.values())}
    tool = SearchTool(retrievers, CORPUS, noise=NoiseConfig(backends=["first", "second"]), seed=0)
    backends = [r.backend for r in tool.search_batch(["topic1"] * 30, keys=[f"k{i}" for i in range(30)])]
    assert set(backends) == {"first", "second"}
    assert backends == [r.backend for r in tool.search_batch(["topic1"] * 30, keys=[f"k{i}" for i in range(30)])]


def test_results_are_numbered_passages_and_top_k():
    result = keyword_tool().search("topic7 passage")
    assert result.doc_ids[0] == "c7" and len(result.doc_ids) == 5
    assert result.text.startswith("[1] passage 7 about topic7") and "[5] " in result.text
    assert format_results([]) == tool_module.NO_RESULTS


def test_empty_query_gets_a_message_not_a_search():
    result = keyword_tool().search("   ")
    assert result.doc_ids == () and result.text == tool_module.EMPTY_QUERY


def test_failing_retriever_raises_tool_error():
    tool = SearchTool(KeywordRetriever(fail=True).index(CORPUS.values()), CORPUS)
    with pytest.raises(ToolError, match="index file vanished"):
        tool.search("topic1")
    ghost = SearchTool(KeywordRetriever(invent_ids=True).index(CORPUS.values()), CORPUS)
    with pytest.raises(ToolError, match="not in the corpus"):
        ghost.search("topic1")


def test_distractors_load_and_merge(tmp_path):
    path = tmp_path / "para.jsonl"
    rows = [
        {"_id": "p0", "title": "", "text": "rewritten passage 3", "source_id": "c3"},
        {"_id": "p1", "title": "", "text": "   ", "source_id": "c4"},
        {"_id": "p2", "text": "another", "source_id": "c5"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    distractors = load_distractors(path)
    assert [d.id for d in distractors.documents] == ["p0", "p2"]
    assert distractors.source_ids == {"p0": "c3", "p2": "c5"}
    merged = with_distractors(CORPUS, distractors)
    assert len(merged) == len(CORPUS) + 2
    with pytest.raises(DataError, match="also corpus ids"):
        with_distractors(CORPUS, [Document("c1", "clash")])
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[0]) + "\n")
    with pytest.raises(DataError, match="duplicate"):
        load_distractors(path)


def test_built_tool_indexes_distractors_with_bm25(tmp_path):
    path = tmp_path / "para.jsonl"
    path.write_text(json.dumps({"_id": "p0", "text": "oxygen tank exploded loudly", "source_id": "c1"}) + "\n")
    corpus = {"c1": Document("c1", "the oxygen tank exploded"), "c2": Document("c2", "the crew landed safely")}
    tool = build_search_tool(corpus, SearchToolConfig(k=3, noise=NoiseConfig(distractors=path)))
    assert set(tool.search("oxygen tank exploded").doc_ids[:2]) == {"c1", "p0"}


def test_real_apollo_paraphrases_load(shared_data):
    distractors = load_distractors(shared_data / "apollo13" / "paraphrases.jsonl")
    assert 2000 < len(distractors.documents) <= 2259
    assert all(source.startswith("c") for source in distractors.source_ids.values())
