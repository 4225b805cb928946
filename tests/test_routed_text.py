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


def test_conversation_mode_keeps_recent_turns_and_the_end_of_long_text():
    assert routed_text(CONVERSATION, "conversation", 2, 1000) == "assistant: first answer\n\nuser: second\nquestion"
    assert routed_text(CONVERSATION, "conversation", 4, 8) == "question"


def test_no_user_message_scores_empty_text():
    assert routed_text([{"role": "system", "content": "s"}], "last_user", 4, 100) == ""


@pytest.mark.parametrize(
    ("settings", "scored"),
    [
        ({}, "second\nquestion"),
        ({"route_on": "conversation", "conversation_turns": "2"}, "assistant: first answer\n\nuser: second\nquestion"),
        ({"route_on": "conversation", "conversation_turns": "4", "max_router_chars": "8"}, "question"),
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
