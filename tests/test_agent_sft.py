"""Warm-start transcripts, their loss masks and the masked training loop, with the tiny model."""

from __future__ import annotations

import json

import pytest

from searchrl.agent.episode import ChatFormat, sample_key, search_key
from searchrl.agent.protocol import format_information
from searchrl.agent.noise import NoiseConfig
from searchrl.agent.rewards import answer_shown
from searchrl.agent.sft import (
    SFTConfig,
    build_transcripts,
    check_played,
    keyword_query,
    masked_batch,
    masked_lm_loss,
    play_transcripts,
    question_keywords,
    run_sft_stage,
    sft_finished,
    train_on_episodes,
)
from searchrl.agent.tool import SearchTool
from searchrl.data.types import Document, QAExample
from searchrl.errors import DataError
from searchrl.retrieval import build_retriever

DOCS = {
    "c1": "The oxygen tank number two failed at 55 hours into the flight.",
    "c2": "The commander of the crew was James Lovell, a Navy captain.",
    "c3": "The lunar module served as a lifeboat with batteries and water.",
    "c4": "Splashdown happened in the Pacific Ocean near Samoa.",
    "c5": "A mission report describes the crew and the mission timeline.",
    # A decoy that shares single words with every question: vague one-word searches land here.
    "c6": "Review notes: crew, crew commander, flight, flight tank, tank, lifeboat, lifeboat, splashdown, splashdown.",
}
QUESTIONS = [
    QAExample("q1", "When did the oxygen tank number two fail during the flight?", ("55 hours",), ("c1",)),
    QAExample("q2", "Who was the commander of the crew?", ("James Lovell",), ("c2",)),
    QAExample("q3", "What served as a lifeboat with batteries?", ("lunar module",), ("c3",)),
    QAExample("q4", "Where did the splashdown happen?", ("Pacific Ocean",), ("c4",)),
    QAExample("q5", "What is the weather on Mars?", ("cold",), ("c9",)),  # gold never retrieved
]




@pytest.fixture(scope="module")
def tool() -> SearchTool:
    corpus = {k: Document(k, v) for k, v in DOCS.items()}
    return SearchTool(build_retriever("bm25").index(list(corpus.values()), show_progress=False), corpus, k=1)


def test_keyword_query_keeps_content_words_and_codes():
    assert question_keywords("Where did the mission AS-102 take place?") == ["mission", "AS-102", "take", "place"]
    assert keyword_query("What is it?") == "What is it?"  # nothing left: fall back to the question


def test_answer_must_be_visible_in_the_passages():
    assert answer_shown(["55 Hours"], "[1] failed at 55\nhours into")
    assert not answer_shown(["56 hours"], "[1] failed at 55 hours")


def test_transcripts_search_then_answer_and_skip_unanswerable(tool):
    transcripts, counts = build_transcripts(QUESTIONS, tool, retry_fraction=0.0, seed=0)
    assert counts["skipped_not_found"] == 1 and {t.example.id for t in transcripts} == {"q1", "q2", "q3", "q4"}
    for transcript in transcripts:
        assert transcript.kind == "direct"
        assert transcript.turns[0].endswith(f"<search>{keyword_query(transcript.example.question)}</search>")
        assert transcript.turns[-1].endswith(f"<answer>{transcript.example.answers[0]}</answer>")


def test_retry_transcripts_miss_first_and_find_second(tool):
    transcripts, counts = build_transcripts(QUESTIONS, tool, retry_fraction=1.0, seed=1)
    retries = [t for t in transcripts if t.kind == "retry"]
    assert retries and counts["retry"] == len(retries)
    for transcript in retries:
        first, second = tool.search_batch(list(transcript.queries))
        gold = set(transcript.example.gold_ids)
        assert not gold & set(first.doc_ids)  # the first search misses the gold chunk ...
        assert gold & set(second.doc_ids)  # ... the rephrased one finds it
        assert len(transcript.turns) == 3


def test_played_transcripts_mask_exactly_the_model_turns(tool, tokenizer):
    transcripts, _ = build_transcripts(QUESTIONS, tool, retry_fraction=1.0, seed=1)
    episodes = play_transcripts(transcripts, tokenizer, tool)
    fmt = ChatFormat(tokenizer)
    for transcript, episode in zip(transcripts, episodes):
        assert episode.finish_reason == "answered"
        assert len(episode.mask) == len(episode.token_ids)
        assert sum(episode.mask[: episode.prompt_length]) == 0
        # Model tokens: every scripted turn followed by the end-of-turn token, nothing else.
        model_ids = [t for t, m in zip(episode.token_ids, episode.mask) if m]
        expected = [i for turn in transcript.turns for i in fmt.encode(turn) + fmt.end_of_turn_ids]
        assert model_ids == expected
        # Environment tokens after the prompt: exactly the search results with their template.
        env_ids = [t for t, m in zip(episode.completion_ids, episode.completion_mask) if not m]
        results = [format_information(s["text"]) for s in episode.searches]
        assert env_ids == [i for content in results for i in fmt.user_turn_ids(content)]


def test_transcripts_built_with_a_noisy_tool_play_as_built(tokenizer):
    # Every search is noised by a key drawn from the episode and turn it is played in; a transcript
    # checked under other keys would meet other noise when played and be dropped as unplayable.
    corpus = {k: Document(k, v) for k, v in DOCS.items()}
    noisy = SearchTool(build_retriever("bm25").index(list(corpus.values()), show_progress=False), corpus, k=1,
                       noise=NoiseConfig(replace_prob=0.5), seed=3)
    # Distinct question texts: a scripted policy finds its transcript by the question.
    questions = [QAExample(f"{q.id}-{n}", q.question.replace("?", f" ({'abcdef'[n]})?"), q.answers, q.gold_ids)
                 for n in range(6) for q in QUESTIONS[:4]]
    transcripts, counts = build_transcripts(questions, noisy, retry_fraction=0.5, retry_after_miss=True, seed=0)
    assert counts["retry_after_miss"] > 0 and counts["direct"] > 0  # the noise made some first searches miss
    episodes = play_transcripts(transcripts, tokenizer, noisy)
    assert all(check_played(transcripts, episodes))


def test_masked_loss_equals_the_library_loss(tool, tokenizer, tiny_lm_dir):
    import torch
    from transformers import AutoModelForCausalLM

    transcripts, _ = build_transcripts(QUESTIONS, tool, retry_fraction=0.5, seed=0)
    episodes = play_transcripts(transcripts[:2], tokenizer, tool)
    input_ids, attention_mask, labels = masked_batch(episodes, tokenizer.pad_token_id)
    assert int((labels != -100).sum()) == sum(sum(e.mask) for e in episodes)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir))
    with torch.no_grad():
        reference = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        ours = masked_lm_loss(model, input_ids, attention_mask, labels)
    assert torch.allclose(reference, ours, atol=1e-5)


def test_training_lowers_the_loss_and_only_touches_the_adapter(tool, tokenizer, tiny_lm_dir):
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from searchrl.training import LoraSettings, build_lora_config

    transcripts, _ = build_transcripts(QUESTIONS, tool, retry_fraction=0.0, seed=0)
    episodes = play_transcripts(transcripts[:2], tokenizer, tool)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir)), build_lora_config(LoraSettings(r=8)))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    config = SFTConfig(max_steps=8, epochs=100, batch_size=2, learning_rate=2e-2, warmup_fraction=0.0)
    losses = train_on_episodes(model, episodes, config, pad_token_id=tokenizer.pad_token_id)
    assert len(losses) == 8
    assert losses[-1] < losses[0] - 0.1
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)


def test_sft_stage_writes_adapter_transcripts_and_done_marker(tmp_path, tool, tokenizer, tiny_lm_dir):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from searchrl.training import LoraSettings, build_lora_config

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir)), build_lora_config(LoraSettings(r=4)))
    stage = tmp_path / "sft"
    assert not sft_finished(stage)
    summary = run_sft_stage(stage, model, tokenizer, tool, QUESTIONS, SFTConfig(max_steps=2, batch_size=2, max_transcripts=3))
    assert sft_finished(stage)
    assert summary["steps"] == 2 and summary["trained_on"] == 3
    records = [json.loads(line) for line in (stage / "transcripts.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(r["finish_reason"] == "answered" for r in records)
    assert len((stage / "metrics.jsonl").read_text().splitlines()) == 2


def test_no_gold_ids_is_an_error(tool):
    with pytest.raises(DataError, match="gold_ids"):
        build_transcripts([QAExample("x", "Who?", ("a",))], tool)


def test_read_results_thoughts_name_the_key_terms_only_where_true(tool):
    from searchrl.agent.sft import ResultReader

    reader = ResultReader(tool.corpus, terms=2)
    # "batteries" is in one document, "lifeboat" in two: the rarest first, ties to the longer word.
    assert reader.key_terms("What served as a lifeboat with batteries?") == ["batteries", "served"]
    # A thought never says what the passages contradict: then it stays generic (None here).
    assert reader.missed_thought(["batteries", "served"], "[1] It served as a lifeboat.") is None
    assert reader.found_prefix(["batteries", "served"], "[1] Splashdown near Samoa.") is None
    assert reader.found_prefix(["batteries", "served"], "[1] It served as a lifeboat.") == "The passages mention served. "
    # Failed calls (random passages) make first searches miss: those transcripts retry.
    corpus = tool.corpus
    noisy = SearchTool(build_retriever("bm25").index(list(corpus.values()), show_progress=False), corpus, k=1,
                       noise=NoiseConfig(fail_prob=0.5), seed=3)
    questions = [QAExample(f"{q.id}-{n}", q.question.replace("?", f" ({'abcdef'[n]})?"), q.answers, q.gold_ids)
                 for n in range(6) for q in QUESTIONS[:4]]
    plain, _ = build_transcripts(questions, noisy, retry_fraction=0.5, retry_after_miss=True, seed=0)
    read, counts = build_transcripts(questions, noisy, retry_fraction=0.5, retry_after_miss=True, read_results=True, seed=0)
    assert [t.queries for t in read] == [t.queries for t in plain]  # the reading changes thoughts, never queries
    assert counts["read_found"] + counts["read_missed"] + counts["read_generic"] == sum(len(t.turns) - 1 for t in read)
    assert counts["read_found"] > 0 and counts["read_missed"] > 0
    reader = ResultReader(corpus)
    for transcript in read:
        terms = reader.key_terms(transcript.example.question)
        keys = [search_key(sample_key(transcript.example.id), turn) for turn in range(1, len(transcript.queries) + 1)]
        shown = [r.text for r in noisy.search_batch(list(transcript.queries), keys=keys)]
        for passages, turn in zip(shown, transcript.turns[1:]):
            if turn.startswith("<think>No passage mentions"):
                assert "<search>" in turn and not any(reader.mentions(t, passages) for t in terms)
            elif turn.startswith("<think>The passages mention"):
                named = turn.removeprefix("<think>The passages mention ").split(".")[0]
                assert "<answer>" in turn and named in terms and reader.mentions(named, passages)
            else:
                assert "mention" not in turn
