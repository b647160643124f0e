"""The tag protocol: the system prompt, the turn parser and its format rules."""

from __future__ import annotations

import pytest

from searchrl.agent.protocol import (
    SYSTEM_PROMPT,
    extract_answer,
    final_answer,
    format_information,
    has_information_tag,
    last_search_query,
    parse_turn,
)


def test_system_prompt_names_the_model_tags_but_never_the_information_tag():
    assert "<search>" in SYSTEM_PROMPT and "<answer>" in SYSTEM_PROMPT and "<think>" in SYSTEM_PROMPT
    assert "information" not in SYSTEM_PROMPT.lower()


def test_results_turn_is_wrapped_in_information_tags():
    assert format_information("[1] a\n") == "<information>\n[1] a\n</information>"


def test_last_search_query_and_answer_take_the_last_complete_block():
    text = "<search>first</search> then <search> second query </search> <search>unclosed"
    assert last_search_query(text) == "second query"
    assert extract_answer("<answer>a</answer><answer>b</answer>") == "b"
    assert extract_answer("<answer>never closed") is None
    assert last_search_query("no tags at all") is None


@pytest.mark.parametrize(
    "text, action",
    [
        ("<think>plan</think>\n<search>oxygen tank</search>", "search"),
        ("<answer>Jim Lovell</answer>\n", "answer"),
        ("<search>q</search>", "search"),
    ],
)
def test_well_formed_turns(text, action):
    turn = parse_turn(text)
    assert turn.action == action
    assert turn.well_formed, turn.problems


@pytest.mark.parametrize(
    "text, problem",
    [
        ("<think>a<search>q</search></think>", "opened inside"),
        ("<think>never closed <answer>x</answer>", "<think> is never closed"),
        ("<think>never closed <answer>x</answer>", "<answer> opened inside <think>"),
        ("<answer>x</answer><think>late</think>", "<think> after the action"),
        ("<search>a</search><search>b</search>", "more than one action"),
        ("```\n<search>q</search>", "markdown"),
        ("**<answer>x</answer>**", "markdown"),
        ("`<search>q</search>`", "markdown"),
        ("<information>made up</information><answer>x</answer>", "model-written <information>"),
        ("<answer>x</answer> and some chatter", "text after the final closing tag"),
        ("I think it is Lovell.", "turn ends without"),
        ("<search>  </search>", "empty search query"),
        ("<answer></answer>", "empty answer"),
        ("<answer>x</answer><search>q</search>", "search after an answer"),
        ("</answer>", "without a matching"),
    ],
)
def test_malformed_turns_are_reported(text, problem):
    turn = parse_turn(text)
    assert not turn.well_formed
    assert any(problem in p for p in turn.problems), turn.problems


def test_think_after_search_is_a_problem():
    assert "<think> after the action" in parse_turn("<search>q</search><think>late</think>").problems


def test_action_is_the_last_complete_action_block():
    assert parse_turn("<answer>x</answer><search>q</search>").action == "search"
    assert parse_turn("<search>q</search><answer>x</answer>").action == "answer"
    assert parse_turn("<search>unclosed").action == "none"


def test_information_tag_detection_is_case_insensitive_and_catches_closing_tags():
    assert has_information_tag("blah </INFORMATION>")
    assert not has_information_tag("information without brackets")


def test_final_answer_requires_the_last_turn_to_end_with_an_answer():
    assert final_answer(["<search>q</search>", "<answer> Lovell </answer>"]) == "Lovell"
    assert final_answer(["<answer>Lovell</answer>", "<search>q</search>"]) is None
    assert final_answer(["<answer>Lovell</answer><search>q</search>"]) is None
    assert final_answer([]) is None
