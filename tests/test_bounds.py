"""Bounded by construction: what clients name cannot grow the process's state, its metrics or
its CPU use per byte without bound."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.feedback import AnswerText
from server.relay import EVENT_SEPARATOR, EventGate, StreamWatcher, data_fields
from tests.conftest import proxy_env, running_proxy
from tests.fake_upstream import FakeUpstream

MESSAGES = [{"role": "user", "content": "Hello?"}]
MiB = 1 << 20


def _target_labels(metrics_text: str) -> set[str]:
    """Every ``target`` label value on the /metrics page."""
    return {
        sample.labels["target"]
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if "target" in sample.labels
    }


async def _send_models(url: str, models: list[str]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        gate = asyncio.Semaphore(32)

        async def send(model: str) -> httpx.Response:
            async with gate:
                return await client.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES})

        return await asyncio.gather(*(send(model) for model in models))


def test_five_thousand_target_names_stay_within_the_route_bound(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path) -> None:
    # 32 routes that clients open fill the table; then 4,968 more distinct names, whole percents
    # written with leading zeros; the route /v1/models lists (router-random-30%) is served throughout
    first = [f"router-random-{percent}%" for percent in range(33) if percent != 30]
    written = (f"router-random-{percent:0{width}d}%" for width in range(1, 100) for percent in range(33, 101))
    names = first + list(dict.fromkeys(written))[: 5000 - len(first)]
    assert len(set(names)) == 5000
    with running_proxy(proxy_env(strong, weak), tmp_path) as proxy:
        served = asyncio.run(_send_models(proxy.url, first))
        refused = asyncio.run(_send_models(proxy.url, names[len(first) :]))
        listed = asyncio.run(_send_models(proxy.url, ["router-random-30%"]))
        metrics = proxy.metrics()
        fractional = httpx.post(f"{proxy.api}/chat/completions", json={"model": "router-random-12.5%", "messages": MESSAGES})
    assert fractional.status_code == 400 and fractional.json()["error"]["code"] == "invalid_target"
    assert all(response.status_code == 200 for response in served + listed)
    assert all(response.status_code == 400 and response.json()["error"]["code"] == "invalid_target" for response in refused)
    assert len(strong.received) + len(weak.received) == 33
    assert len(_target_labels(metrics)) == 33


def test_clients_name_only_the_allowed_routers(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path) -> None:
    with running_proxy(proxy_env(strong, weak), tmp_path) as proxy:  # ROUTEGATE_ROUTER=random, ROUTEGATE_ROUTERS unset
        client = openai.OpenAI(base_url=proxy.api, api_key="unused", max_retries=0)
        listed = {model.id for model in client.models.list()}
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="router-mf-0.5", messages=MESSAGES)
        metrics = proxy.metrics()
        log = proxy.log()
    assert refused.value.body["code"] == "unknown_router" and refused.value.body["param"] == "model"
    assert not any(name.startswith("router-mf") for name in listed)
    assert {name.split("-")[1] for name in listed if name.startswith("router-")} == {"random"}
    assert 'router="mf"' not in metrics and "router mf loaded" not in log
    assert not strong.received and not weak.received


def _watch(chunks: int, chunk_bytes: int = 4096) -> StreamWatcher:
    """A watcher fed ``chunks`` chunks of one event without a blank line, then a usage event and [DONE]."""
    watcher = StreamWatcher()
    watcher.feed(b"data: ")
    for _ in range(chunks):
        watcher.feed(b"x" * (chunk_bytes - 1) + b"\n")
    usage = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
    watcher.feed(b"\n\ndata: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n")
    return watcher


def test_stream_watcher_scans_each_byte_once() -> None:
    small, large = _watch(MiB // 4096), _watch(16 * MiB // 4096)  # 1 MiB and 16 MiB without a blank line
    for watcher, size in ((small, MiB), (large, 16 * MiB)):
        assert watcher.done and watcher.usage == {"prompt_tokens": 3, "completion_tokens": 4}
        assert size <= watcher.bytes_scanned <= size + 4 * size // 4096 + 1024  # a few bytes rescanned per chunk
    assert large.bytes_scanned / small.bytes_scanned < 17  # linear: 16 times the bytes, 16 times the work


_CHOICE_EVENT = b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}}], "usage": null}'
_USAGE_EVENT = b'data: {"choices": [], "usage": {"total_tokens": 9}}'
_MIXED_ENDS = (_CHOICE_EVENT + b"\r\n\r\n") * 2 + b'data: {"a": 1}\n\n' + _USAGE_EVENT + b"\n\ndata: [DONE]\r\n\r\n"
_BARE_CR_ENDS = (_CHOICE_EVENT + b"\r\r") * 2 + _USAGE_EVENT + b"\r\rdata: [DONE]\r\r"


@pytest.mark.parametrize("events", [_MIXED_ENDS, _BARE_CR_ENDS], ids=["crlf-and-lf", "bare-cr"])
def test_stream_watcher_reads_events_split_anywhere(events: bytes) -> None:
    for size in (1, 2, 3, 5, 7):
        watcher = StreamWatcher()
        for start in range(0, len(events), size):
            watcher.feed(events[start : start + size])
        assert watcher.done and watcher.usage == {"total_tokens": 9}, size
        assert watcher.choice_chunks == 2, size  # the estimate of a stream without usage: one token per choice chunk


def test_an_event_ends_at_two_line_ends_of_any_kind_and_one_crlf_is_one_line_end() -> None:
    for blank in (b"\n\n", b"\r\r", b"\r\n\r\n", b"\r\n\n", b"\n\r\n", b"\r\r\n", b"\n\r"):
        assert EVENT_SEPARATOR.search(b"data: 1" + blank + b"data: 2").group() == blank, blank
    assert EVENT_SEPARATOR.search(b"data: 1\r\ndata: 2\r\n") is None  # two lines of one event
    assert data_fields(b"data: 1\rdata: 2\r\ndata: 3\nid: 4") == [b"1", b"2", b"3"]


def test_the_feedback_reader_of_streamed_text_holds_no_more_than_one_event() -> None:
    answer = AnswerText(max_chars=100)
    answer.feed(b"data: ")
    for _ in range(8 * MiB // 4096):  # 8 MiB without a blank line: skipped, not held
        answer.feed(b"x" * 4096)
    answer.feed(b'\n\ndata: {"choices": [{"index": 0, "delta": {"content": "hi"}}]}\n\n')
    assert answer.text == "hi"
    assert answer.events.bytes_scanned <= 8 * MiB + 8 * MiB // 4096 * 4 + 1024  # each byte searched once


def _gated(events: bytes, size: int, max_event_bytes: int = 1 << 16) -> bytes:
    gate = EventGate(drop_usage=True, max_event_bytes=max_event_bytes)
    relayed = b"".join(gate.feed(events[start : start + size]) for start in range(0, len(events), size))
    return relayed + gate.flush()


def test_the_event_gate_drops_only_the_usage_only_event_however_the_bytes_are_cut() -> None:
    content = b'data: {"choices": [{"index": 0, "delta": {"content": "a"}}], "usage": null}\r\n\r\n'
    usage_only = b'data: {"choices": [], "usage": {"total_tokens": 9}}\n\n'
    kept = b'data: {"choices":[],"usage":null}\n\n: comment\n\ndata: [DONE]\n\n'
    for size in (1, 2, 3, 5, 7, 1000):
        assert _gated(content + usage_only + kept, size) == content + kept, size
        bare_cr = (content + usage_only + kept).replace(b"\r\n", b"\r").replace(b"\n", b"\r")
        assert _gated(bare_cr, size) == bare_cr.replace(usage_only.replace(b"\n", b"\r"), b""), size
    oversized = b"data: " + b"x" * 1000 + b"\n\n" + usage_only + b"data: [DONE]"  # ends without a blank line
    assert _gated(oversized, 10, max_event_bytes=64) == oversized.replace(usage_only, b"")


def test_the_event_gate_passes_whole_events_and_a_cut_drops_the_unfinished_one() -> None:
    first, second = b'data: {"choices": [{"index": 0}]}\n\n', b'data: {"choices": [{"index": 1}]}\n\n'
    gate = EventGate(drop_usage=False)
    assert gate.feed(first + second[:10]) == first  # half an event waits for its blank line
    assert gate.cut_off() == b"" and gate.flush() == b""  # a cut drops it: the client got whole events only
    small = EventGate(drop_usage=False, max_event_bytes=64)
    passed = small.feed(b"data: " + b"x" * 100) + small.feed(b"y" * 10)  # oversized: passes on as it comes
    assert passed == b"data: " + b"x" * 100 + b"y" * 7  # all but what may begin a separator
    assert small.cut_off() == b"\n\n"  # the blank line that ends the part already sent


def test_a_key_cut_between_two_chunks_of_an_oversized_event_is_blanked_out() -> None:
    """An event over 64 KiB passes on as it comes: the key an upstream's error quotes in it may
    arrive in two chunks, and neither half may reach the client."""
    key = b"sk-upstream-0123456789abcdef"
    event = b'data: {"error": {"message": "' + b"x" * 70_000 + b" bad key " + key + b'"}}\n\n'
    cut = event.index(key) + 15

    def redact(data: bytes) -> bytes:
        return data.replace(key, b"[redacted]")

    for hold in (len(key), len(key) + 40):
        gate = EventGate(drop_usage=False, redact=redact, hold=hold)
        relayed = b"".join(gate.feed(part) for part in (event[:cut], event[cut:])) + gate.flush()
        assert key[:12] not in relayed and key[-12:] not in relayed
        assert relayed == redact(event)


def test_the_event_gate_blanks_keys_out_of_whole_events_and_of_what_it_flushes() -> None:
    """The gate is the one place a relayed stream's bytes are redacted: whole events, cut into
    chunks anywhere, and an unfinished last event flushed at the stream's end."""
    key = b"sk-upstream-0123456789abcdef"
    event = b'data: {"error": {"message": "bad key ' + key + b'"}}\n\n'
    tail = b'data: {"error": {"message": "' + key + b'"}}'  # no blank line: flushed when the stream ends

    def redact(data: bytes) -> bytes:
        return data.replace(key, b"[redacted]")

    for cut in range(1, len(event)):
        gate = EventGate(drop_usage=False, redact=redact, hold=len(key))
        relayed = gate.feed(event[:cut]) + gate.feed(event[cut:] + tail) + gate.flush()
        assert key not in relayed and relayed == redact(event + tail)


def test_every_listed_model_is_served_when_auto_is_a_target_route(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
) -> None:
    env = proxy_env(strong, weak, aliases='{"auto": "router-random-30%"}')
    with running_proxy(env, tmp_path) as proxy:
        listed = [model.id for model in openai.OpenAI(base_url=proxy.api, api_key="k", max_retries=0).models.list()]
        answers = {
            model: httpx.post(f"{proxy.api}/chat/completions", json={"model": model, "messages": MESSAGES}).status_code
            for model in listed
        }
    assert "router-random-0.5" in listed  # the default threshold's route, not auto's target
    assert set(answers.values()) == {200}, answers


def test_the_listed_and_aliased_target_routes_are_served_when_the_table_is_full(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
) -> None:
    env = proxy_env(strong, weak, max_target_routes="1", aliases='{"thrifty": "router-random-45%"}')
    models = ["router-random-1%", "router-random-2%", "router-random-30%", "thrifty"]  # one after the other
    with running_proxy(env, tmp_path) as proxy:
        answers = [httpx.post(f"{proxy.api}/chat/completions", json={"model": model, "messages": MESSAGES}) for model in models]
    assert [answer.status_code for answer in answers] == [200, 400, 200, 200]
    assert answers[1].json()["error"]["code"] == "invalid_target"


def test_one_client_key_cannot_take_every_target_route(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path) -> None:
    """With client keys, each key opens at most a quarter of ROUTEGATE_MAX_TARGET_ROUTES: one
    client naming percent after percent leaves the others routes of their own."""
    keys = ["client-key-aaaaaaaaaaaa", "client-key-bbbbbbbbbbbb"]
    env = proxy_env(strong, weak, max_target_routes="8", api_keys=json.dumps(keys))

    def chat(key: str, model: str) -> httpx.Response:
        headers = {"authorization": f"Bearer {key}"}
        return httpx.post(f"{proxy.api}/chat/completions", json={"model": model, "messages": MESSAGES}, headers=headers)

    with running_proxy(env, tmp_path) as proxy:
        first = [chat(keys[0], f"router-random-{percent}%") for percent in range(1, 11)]
        other = [chat(keys[1], f"router-random-{percent}%") for percent in (50, 51)]
        shared = chat(keys[1], "router-random-1%")  # a route the first key opened serves every client
        listed = chat(keys[0], "router-random-30%")  # /v1/models lists it: it takes no place
    assert [answer.status_code for answer in first] == [200, 200] + [400] * 8
    refusal = first[2].json()["error"]
    assert refusal["code"] == "invalid_target" and refusal["param"] == "model"
    assert "this client key opened 2 target routes" in refusal["message"] and keys[0] not in refusal["message"]
    assert [answer.status_code for answer in (*other, shared, listed)] == [200, 200, 200, 200]


def test_names_too_long_to_parse_are_refused_not_a_server_error(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path) -> None:
    # a percent of 5,000 digits is past Python's int() limit; a router name of 100,000 letters
    # must not come back whole in the refusal
    huge_percent = "router-random-" + "9" * 5000 + "%"
    long_router = "router-" + "x" * 100_000 + "-0.5"
    with running_proxy(proxy_env(strong, weak), tmp_path) as proxy:
        chat = httpx.post(f"{proxy.api}/chat/completions", json={"model": huge_percent, "messages": MESSAGES})
        retrieved = httpx.get(f"{proxy.api}/models/{huge_percent}")
        unknown = httpx.post(f"{proxy.api}/chat/completions", json={"model": long_router, "messages": MESSAGES})
        padded = httpx.post(f"{proxy.api}/chat/completions", json={"model": "router-random-0050%", "messages": MESSAGES})
        log = proxy.log()
    assert chat.status_code == 400 and chat.json()["error"]["code"] == "invalid_target"
    assert retrieved.status_code == 404 and retrieved.json()["error"]["code"] == "model_not_found"
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "unknown_router"
    assert len(unknown.content) < 1000
    assert padded.status_code == 200  # leading zeros are still a whole percent (50%)
    assert "Traceback" not in log and len(strong.received) + len(weak.received) == 1
