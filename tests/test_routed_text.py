"""What the router scores, taken from the messages."""

from server.chat_request import routed_text

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
