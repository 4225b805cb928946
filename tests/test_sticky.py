"""Sticky conversations through a real routegate: once strong, follow-ups stay strong."""

from __future__ import annotations

from pathlib import Path

import pytest
from openai import OpenAI

from server.conversations import StickyStore, conversation_keys
from tests.conftest import Proxy, proxy_env, running_proxy
from tests.fake_upstream import FakeUpstream
from tests.metric_values import wait_for
from tests.metrics_text import metric_sum

ALWAYS_STRONG = "router-random-0"  # every score >= 0
ALWAYS_WEAK = "router-random-1"  # the random router scores in [0, 1)


@pytest.fixture(scope="module")
def sticky_proxy(strong: FakeUpstream, weak: FakeUpstream, tmp_path_factory: pytest.TempPathFactory):
    with running_proxy(proxy_env(strong, weak, route_on="sticky"), tmp_path_factory.mktemp("sticky")) as proxy:
        yield proxy


def _ask(proxy: Proxy, model: str, messages: list[dict], conversation_id: str | None = None):
    client = OpenAI(base_url=proxy.api, api_key="unused", max_retries=0)
    headers = {"x-routegate-conversation-id": conversation_id} if conversation_id else None
    raw = client.chat.completions.with_raw_response.create(model=model, messages=messages, extra_headers=headers)
    reply = raw.parse()
    return raw.headers, reply


def test_follow_up_of_a_strong_conversation_stays_strong_by_message_hash(sticky_proxy: Proxy, strong, weak) -> None:
    first = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Prove Fermat's little theorem."}]
    headers, reply = _ask(sticky_proxy, ALWAYS_STRONG, first)
    assert (headers["x-routegate-tier"], headers["x-routegate-decision"]) == ("strong", "score")

    follow_up = [
        *first,
        {"role": "assistant", "content": reply.choices[0].message.content},
        {"role": "user", "content": "Thanks!"},
    ]
    headers, _ = _ask(sticky_proxy, ALWAYS_WEAK, follow_up)
    assert (headers["x-routegate-tier"], headers["x-routegate-decision"]) == ("strong", "sticky")
    assert "x-routegate-score" not in headers

    third = [*follow_up, {"role": "assistant", "content": "You're welcome."}, {"role": "user", "content": "One more?"}]
    headers, _ = _ask(sticky_proxy, ALWAYS_WEAK, third)
    assert (headers["x-routegate-tier"], headers["x-routegate-decision"]) == ("strong", "sticky")
    assert [received.body["messages"][-1]["content"] for received in strong.received] == [
        "Prove Fermat's little theorem.",
        "Thanks!",
        "One more?",
    ]
    assert weak.received == []


def test_other_conversations_are_scored_as_usual(sticky_proxy: Proxy, strong, weak) -> None:
    _ask(sticky_proxy, ALWAYS_STRONG, [{"role": "user", "content": "Hard question A"}])
    other = [
        {"role": "user", "content": "Hard question B"},
        {"role": "assistant", "content": "answer from strong"},
        {"role": "user", "content": "And then?"},
    ]
    headers, _ = _ask(sticky_proxy, ALWAYS_WEAK, other)
    assert (headers["x-routegate-tier"], headers["x-routegate-decision"]) == ("weak", "score")
    assert len(weak.received) == 1


def test_the_sticky_gauge_counts_live_conversations_and_falls_as_they_expire(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
) -> None:
    """Expired conversations are not counted, and the gauge falls without a request."""
    env = proxy_env(strong, weak, route_on="sticky", sticky_ttl_seconds="4")  # room for three requests on a busy machine
    with running_proxy(env, tmp_path) as proxy:
        for conversation in range(3):
            _ask(proxy, ALWAYS_STRONG, [{"role": "user", "content": f"question {conversation}"}])
        assert metric_sum(proxy.metrics(), "routegate_sticky_conversations") == 3
        assert wait_for(lambda: metric_sum(proxy.metrics(), "routegate_sticky_conversations") == 0, timeout=10)


def test_conversation_id_header_keys_the_conversation(sticky_proxy: Proxy, strong, weak) -> None:
    remembered = metric_sum(sticky_proxy.metrics(), "routegate_sticky_conversations")
    scored = metric_sum(sticky_proxy.metrics(), "routegate_threshold_decisions_total")
    headers, _ = _ask(sticky_proxy, ALWAYS_STRONG, [{"role": "user", "content": "first"}], conversation_id="conv-42")
    assert headers["x-routegate-tier"] == "strong"
    # the client sends only the new turn: the id, not the history, ties it to the conversation
    headers, _ = _ask(sticky_proxy, ALWAYS_WEAK, [{"role": "user", "content": "second"}], conversation_id="conv-42")
    assert (headers["x-routegate-tier"], headers["x-routegate-decision"]) == ("strong", "sticky")
    headers, _ = _ask(sticky_proxy, ALWAYS_WEAK, [{"role": "user", "content": "second"}], conversation_id="conv-43")
    assert (headers["x-routegate-tier"], headers["x-routegate-decision"]) == ("weak", "score")
    # conv-42 is remembered as strong; conv-43 went weak and is not
    assert metric_sum(sticky_proxy.metrics(), "routegate_sticky_conversations") == remembered + 1
    # the two answers decided by score count as the threshold routes' own choices, the sticky one does not
    assert metric_sum(sticky_proxy.metrics(), "routegate_threshold_decisions_total") == scored + 2


def test_without_sticky_mode_follow_ups_are_rescored(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path) -> None:
    with running_proxy(proxy_env(strong, weak), tmp_path) as proxy:
        first = [{"role": "user", "content": "Prove it."}]
        _ask(proxy, ALWAYS_STRONG, first, conversation_id="c1")
        follow_up = [*first, {"role": "assistant", "content": "answer from strong"}, {"role": "user", "content": "More."}]
        headers, _ = _ask(proxy, ALWAYS_WEAK, follow_up, conversation_id="c1")
    assert (headers["x-routegate-tier"], headers["x-routegate-decision"]) == ("weak", "score")


def test_store_forgets_after_ttl_and_keeps_at_most_max_size() -> None:
    now = [0.0]
    store = StickyStore(max_size=2, ttl=10.0, clock=lambda: now[0])
    store.remember("a")
    now[0] = 5.0
    assert store.is_strong("a")  # a use refreshes it: now kept until 15
    now[0] = 14.0
    assert store.is_strong("a")
    now[0] = 30.0
    assert not store.is_strong("a") and len(store) == 0
    for key in ("x", "y", "z"):
        store.remember(key)
    assert len(store) == 2 and not store.is_strong("x") and store.is_strong("z")


def test_a_conversation_never_goes_back_to_a_less_capable_model() -> None:
    """Two turns of one conversation at once, answered by different models: whichever ends last,
    the more capable model is the one remembered (models from least to most capable)."""
    now = [0.0]
    store = StickyStore(max_size=10, ttl=10.0, clock=lambda: now[0])
    order = ["small", "medium", "large"]
    store.remember("c", "large", order)
    store.remember("c", "medium", order)  # the turn that ended last got a less capable model
    assert store.recall("c") == "large"
    store.remember("c", "medium")  # without an order: as given
    assert store.recall("c") == "medium"
    now[0] = 30.0  # expired: a new conversation
    store.remember("c", "small", order)
    assert store.recall("c") == "small"


def test_hash_keys_chain_turns_and_ignore_unrelated_fields() -> None:
    first = [{"role": "user", "content": "hi"}]
    keys = conversation_keys(first, None)
    assert keys.previous is None
    reply = {"role": "assistant", "content": "hello", "refusal": None}
    follow_up = conversation_keys(
        [{"role": "user", "content": [{"type": "text", "text": "hi"}]}, reply, {"role": "user", "content": "?"}], None
    )
    assert follow_up.previous == keys.current
    assert conversation_keys(first, "abc").previous == conversation_keys([], "abc").current == "id:abc"


def test_with_client_keys_each_client_has_its_own_conversations(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path) -> None:
    """Two clients that number their conversations alike, or ask the same thing: one going strong
    decides nothing for the other, and the other cannot see it in its headers."""
    env = proxy_env(strong, weak, route_on="sticky", api_keys='["rg-key-alice", "rg-key-bob"]')
    with running_proxy(env, tmp_path) as proxy:
        alice, bob = (OpenAI(base_url=proxy.api, api_key=key, max_retries=0) for key in ("rg-key-alice", "rg-key-bob"))
        first = [{"role": "user", "content": "Prove Fermat's little theorem."}]
        follow_up = [*first, {"role": "assistant", "content": "answer from strong"}, {"role": "user", "content": "Thanks!"}]

        def tier(client: OpenAI, model: str, messages: list[dict], conversation_id: str | None = None) -> tuple[str, str]:
            headers = {"x-routegate-conversation-id": conversation_id} if conversation_id else None
            raw = client.chat.completions.with_raw_response.create(model=model, messages=messages, extra_headers=headers)
            return raw.headers["x-routegate-tier"], raw.headers["x-routegate-decision"]

        assert tier(alice, ALWAYS_STRONG, first, "7") == ("strong", "score")
        assert tier(bob, ALWAYS_WEAK, first, "7") == ("weak", "score")  # Bob's own conversation 7
        assert tier(alice, ALWAYS_WEAK, follow_up, "7") == ("strong", "sticky")
        assert tier(alice, ALWAYS_STRONG, first) == ("strong", "score")
        assert tier(bob, ALWAYS_WEAK, follow_up) == ("weak", "score")  # the same messages, Bob's
        assert tier(alice, ALWAYS_WEAK, follow_up) == ("strong", "sticky")


def test_a_conversation_routed_strong_stays_strong_though_a_fallback_answered(sticky_proxy: Proxy, strong, weak) -> None:
    strong.behaviour.fail_statuses = [500] * 5  # every try at the strong tier fails: weak answers
    headers, _ = _ask(sticky_proxy, ALWAYS_STRONG, [{"role": "user", "content": "Hard one"}], conversation_id="fell-back")
    strong.behaviour.fail_statuses = []
    assert (headers["x-routegate-tier"], headers["x-routegate-fallback"]) == ("weak", "strong->weak:http_5xx")
    headers, _ = _ask(sticky_proxy, ALWAYS_WEAK, [{"role": "user", "content": "Next"}], conversation_id="fell-back")
    assert (headers["x-routegate-tier"], headers["x-routegate-decision"]) == ("strong", "sticky")


def test_a_strong_stream_its_client_stopped_keeps_the_conversation_strong(sticky_proxy: Proxy, strong, weak) -> None:
    """ "Stop generating" on a strong answer: the conversation went strong, and its next turn stays there."""
    strong.behaviour.chunks, strong.behaviour.chunk_delay = 50, 0.05
    client = OpenAI(base_url=sticky_proxy.api, api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model=ALWAYS_STRONG,
        messages=[{"role": "user", "content": "write a long story"}],
        stream=True,
        extra_headers={"x-routegate-conversation-id": "conv-stopped"},
    )
    next(iter(stream))
    stream.close()  # the client leaves after its first chunk
    assert wait_for(lambda: metric_sum(sticky_proxy.metrics(), "routegate_requests_total", status="499") >= 1)
    headers, _ = _ask(sticky_proxy, ALWAYS_WEAK, [{"role": "user", "content": "shorter, please"}], conversation_id="conv-stopped")
    assert (headers["x-routegate-tier"], headers["x-routegate-decision"]) == ("strong", "sticky")
