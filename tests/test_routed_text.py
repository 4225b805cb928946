"""What the router scores, taken from the messages, and through a running gateway."""

from pathlib import Path

import pytest
from openai import OpenAI

from server.chat_request import routed_text
from tests.conftest import proxy_env, running_proxy
from tests.fake_upstream import FakeUpstream
from tests.standin_router import MathinessRouter

CONVERSATION = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "first question"},
    {"role": "assistant", "content": "first answer"},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "second"},
            {"type": "image_url", "image_url": {"url": "x"}},
            {"type": "text", "text": "question"},
        ],
    },
]


def test_last_user_message_with_text_parts_only():
    assert routed_text(CONVERSATION, "last_user", 4, 1000) == "second\nquestion"


def test_conversation_mode_puts_the_newest_turn_first_and_keeps_it_when_the_text_is_cut():
    """The encoders read a text's first 128 tokens: oldest first, a long earlier answer would
    leave the new question unread."""
    assert routed_text(CONVERSATION, "conversation", 2, 1000) == "user: second\nquestion\n\nassistant: first answer"
    long_answer = [*CONVERSATION[:2], {"role": "assistant", "content": "x" * 5000}, {"role": "user", "content": "thanks!"}]
    assert routed_text(long_answer, "conversation", 4, 20) == "user: thanks!\n\nassis"


def test_without_user_text_the_system_prompt_is_scored():
    """A system prompt alone, or a last user message without text (an image): not the empty text
    every such request would share, whatever it asks."""
    system_only = [{"role": "system", "content": "Prove the Riemann hypothesis."}]
    assert routed_text(system_only, "last_user", 4, 100) == "Prove the Riemann hypothesis."
    assert routed_text(system_only, "conversation", 4, 100) == "Prove the Riemann hypothesis."
    image_only = [*system_only, {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    assert routed_text(image_only, "last_user", 4, 100) == "Prove the Riemann hypothesis."
    follow_up = [{"role": "user", "content": "What is on it?"}, {"role": "user", "content": "  "}]
    assert routed_text(follow_up, "last_user", 4, 100) == "What is on it?"  # the last user message with text
    assert routed_text([{"role": "user", "content": None}], "last_user", 4, 100) == ""


@pytest.mark.parametrize(
    ("settings", "scored"),
    [
        ({}, "second\nquestion"),
        ({"route_on": "conversation", "conversation_turns": "2"}, "user: second\nquestion\n\nassistant: first answer"),
        ({"route_on": "conversation", "conversation_turns": "4", "max_router_chars": "8"}, "user: se"),
    ],
)
def test_the_gateway_scores_what_the_settings_say(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path, settings: dict[str, str], scored: str
) -> None:
    (tmp_path / "checkpoints" / "standin").mkdir(parents=True)
    env = proxy_env(strong, weak, router="standin", checkpoint_dir=str(tmp_path / "checkpoints"), **settings)
    with running_proxy(env, tmp_path, module="tests.standin_router") as proxy:
        client = OpenAI(base_url=proxy.api, api_key="unused", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="router-standin-0.5", messages=CONVERSATION)
    # the stand-in's score is a function of the text it was given
    assert float(raw.headers["x-routegate-score"]) == pytest.approx(MathinessRouter().score([scored])[0], abs=1e-6)
