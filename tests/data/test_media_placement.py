"""LLaMA-Factory's placeholder rules, shared by the dataset converter and the chat engines."""

import pytest

from lathe.data.media.placement import Misplaced, answer_holding, place


def _chat(*contents):
    roles = ["user", "assistant"]
    return [{"role": roles[i % 2], "content": c} for i, c in enumerate(contents)]


def test_items_without_placeholders_go_to_the_start_of_the_first_user_turn():
    messages = _chat("describe", "a cat", "and this?")
    placed = place(messages, {"<image>": 2, "<video>": 0})
    assert placed[0]["content"] == "<image><image>describe" and placed[2]["content"] == "and this?"
    assert messages[0]["content"] == "describe"  # the caller's messages are not changed


def test_placeholders_must_match_the_items_and_unlisted_kinds_are_text():
    assert place(_chat("<image>a", "b", "<image>c"), {"<image>": 2}) == _chat("<image>a", "b", "<image>c")
    assert place(_chat("<video> is a tag", "ok"), {"<image>": 0}) == _chat("<video> is a tag", "ok")
    with pytest.raises(Misplaced) as e:
        place(_chat("<image><image>a", "b"), {"<image>": 1})
    assert (e.value.reason, e.value.placeholder, e.value.found, e.value.items) == ("counts", "<image>", 2, 1)
    with pytest.raises(Misplaced) as e:
        place([{"role": "system", "content": "s"}], {"<audio>": 1})
    assert e.value.reason == "no_user_turn"


def test_answers_may_not_hold_placeholders():
    assert answer_holding(_chat("<image>q", "a"), ["<image>"]) is None
    assert answer_holding(_chat("q", "see <image>"), ["<image>"]) == "assistant"
    assert answer_holding([{"role": "observation", "content": "<image>"}], ["<image>"]) is None  # a tool's result
