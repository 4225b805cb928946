"""What relaying one stream's events costs in the event gate, in one process: an eight-event
stream of the mock's size cut into 300-byte chunks, its upstream key blanked out.

``--relay-redacts`` redacts what the gate passes, chunk by chunk (routegate before the gate
redacted every event itself); ``--repo`` imports ``server.relay`` from another checkout, to
compare two builds in one run:

    python bench/event_gate.py
    python bench/event_gate.py --repo /tmp/before --relay-redacts
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit

KEY = b"sk-strong-secret-key-0123456789"
SPELLINGS = (KEY, KEY.replace(b"-", b"\\u002d"))  # as an upstream's JSON may escape it


def redact(data: bytes) -> bytes:
    for spelling in SPELLINGS:
        if spelling in data:
            data = data.replace(spelling, b"[redacted]")
    return data


def stream_chunks(chunk_bytes: int = 300) -> list[bytes]:
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    events = b"".join(
        b"data: "
        + json.dumps({**chunk, "choices": [{"index": 0, "delta": {"content": f"strong-{n} "}, "finish_reason": None}]}).encode()
        + b"\n\n"
        for n in range(5)
    )
    events += b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5}}\n\ndata: [DONE]\n\n'
    return [events[start : start + chunk_bytes] for start in range(0, len(events), chunk_bytes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", default=".", help="checkout whose server.relay is measured (default: this one)")
    parser.add_argument("--relay-redacts", action="store_true", help="redact each chunk the gate passes instead")
    parser.add_argument("--streams", type=int, default=20_000)
    args = parser.parse_args()
    sys.path.insert(0, args.repo)
    from server.relay import EventGate

    chunks = stream_chunks()

    def relay_one_stream() -> None:
        if args.relay_redacts:
            gate = EventGate(False)
            for chunk in chunks:
                redact(gate.feed(chunk))
            redact(gate.flush())
        else:
            gate = EventGate(False, redact=redact, hold=len(KEY) * 6)
            for chunk in chunks:
                gate.feed(chunk)
            gate.flush()

    seconds = timeit.timeit(relay_one_stream, number=args.streams)
    per_stream = round(seconds / args.streams * 1e6, 2)
    print(json.dumps({"repo": args.repo, "relay_redacts": args.relay_redacts, "us_per_stream": per_stream}))


if __name__ == "__main__":
    main()
