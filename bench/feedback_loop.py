"""Learning from traffic on visible data: does the dashboard's estimated quality retained find the
true value?

A data set's train prompts (one strong/weak pair) stand in for a user's traffic. They are
replayed, in a seeded random order, through a real ``routegate serve`` with
``ROUTEGATE_SHADOW_RATE=1`` in front of fake upstreams whose answers name the record, and a fake
judge that answers ``[[A]]``/``[[B]]``/``[[C]]`` from the data set's scores of that record. After
0, 100, 300, 1000 and all 2000 judged requests the estimate (the dashboard's PromQL formula, computed by
server.quality from the same ``routegate_judgements_total`` counters) and its 95% interval are
printed beside the true quality retained of the whole replay, computed from the data: the sum
over strong-routed prompts of (strong - weak) over the sum over all prompts. Finally the judged
traffic is exported with ``routegate feedback export`` (for ``routegate train``).

    .venv/bin/python bench/feedback_loop.py --data ../shared/data/routellm-mmlu.jsonl.gz
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from openai import OpenAI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from routers.data import load_records, pair_records  # noqa: E402
from server.quality import Verdicts, quality  # noqa: E402
from tests.conftest import REPO, running_proxy  # noqa: E402
from tests.fake_judge import FakeJudge  # noqa: E402
from tests.fake_upstream import FakeUpstream, Received  # noqa: E402
from tests.metrics_text import metric_sum  # noqa: E402

_ANSWER = re.compile(r"^(strong|weak) answer to record (\S+)$")


class DataUpstream(FakeUpstream):
    """A fake upstream answering ``<tier> answer to record <id>`` for the record whose prompt it got."""

    def __init__(self, tier: str, ids: dict[str, str]) -> None:
        super().__init__(tier)
        self.ids = ids

    async def _answer(self, request: Request) -> Response:
        body: dict[str, Any] = await request.json()
        self.received.append(Received({}, {}))
        prompt = body["messages"][-1]["content"]
        answer = self.completion(body["model"])
        answer["choices"][0]["message"]["content"] = f"{self.name} answer to record {self.ids[prompt]}"
        return JSONResponse(answer)


def data_verdict(scores: dict[str, tuple[float, float]]):
    """A judge verdict from the data: the answer of the tier with the higher score wins; equal: a tie."""

    def verdict(question: str, answer_a: str, answer_b: str) -> str:
        tier_a, record = _ANSWER.match(answer_a).groups()  # type: ignore[union-attr]
        strong, weak = scores[record]
        if strong == weak:
            return "[[C]]"
        better = "strong" if strong > weak else "weak"
        return "[[A]]" if tier_a == better else "[[B]]"

    return verdict


def true_retained(decisions: list[tuple[str, str]], scores: dict[str, tuple[float, float]]) -> float | None:
    """(routed - weak) / (strong - weak) quality of the replayed requests, from the data's scores."""
    gained = sum(scores[record][0] - scores[record][1] for record, tier in decisions if tier == "strong")
    gap = sum(scores[record][0] - scores[record][1] for record, _ in decisions)
    return gained / gap if gap else None


def judged_counts(metrics: str, router: str) -> Verdicts:
    counts = Verdicts()
    for tier in ("strong", "weak"):
        for verdict in ("chosen_better", "tie", "other_better", "unparsable"):
            value = metric_sum(metrics, "routegate_judgements_total", router=router, chosen_tier=tier, verdict=verdict)
            counts.add(tier, verdict, int(value))
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/routellm-mmlu.jsonl.gz")
    parser.add_argument("--strong", default="gpt-4-1106-preview", help="strong model in the data")
    parser.add_argument("--weak", default="mistralai/Mixtral-8x7B-Instruct-v0.1", help="weak model in the data")
    parser.add_argument("--router", default="mf")
    parser.add_argument("--model", default=None, help="routed model string (default router-<router>-50%%)")
    parser.add_argument("--requests", type=int, default=2000, help="prompts replayed (the true value is theirs)")
    parser.add_argument(
        "--checkpoints", default="0,100,300,1000,2000", help="judged counts to report at (all replayed: equals the true value)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the figures")
    parser.add_argument("--export", type=Path, default=None, help="keep the exported records in this file")
    args = parser.parse_args()
    checkpoints = [int(point) for point in args.checkpoints.split(",") if int(point) <= args.requests]

    records = pair_records(load_records([args.data], "train"), args.strong, args.weak)
    ids: dict[str, str] = {}
    scores: dict[str, tuple[float, float]] = {}
    for record in records:  # a prompt text repeated in the data keeps its first record
        if record["prompt"] not in ids and "\n\n[The" not in record["prompt"]:
            ids[record["prompt"]] = record["id"]
            scores[record["id"]] = (float(record["scores"][args.strong]), float(record["scores"][args.weak]))
    prompts = random.Random(args.seed).sample(sorted(ids), args.requests)

    strong, weak, judge = DataUpstream("strong", ids).start(), DataUpstream("weak", ids).start(), FakeJudge().start()
    judge.verdict = data_verdict(scores)
    workdir = Path(tempfile.mkdtemp(prefix="routegate-feedback-loop-"))
    db = workdir / "feedback.sqlite3"
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith("ROUTEGATE_")},
        "ROUTEGATE_STRONG__BASE_URL": strong.url,
        "ROUTEGATE_STRONG__MODEL": args.strong,
        "ROUTEGATE_WEAK__BASE_URL": weak.url,
        "ROUTEGATE_WEAK__MODEL": args.weak,
        "ROUTEGATE_ROUTER": args.router,
        "ROUTEGATE_SHADOW_RATE": "1",
        "ROUTEGATE_SHADOW_QUEUE_SIZE": "100000",
        "ROUTEGATE_FEEDBACK_DB": str(db),
        "ROUTEGATE_FEEDBACK_STORE_TEXT": "true",
        "ROUTEGATE_JUDGE__BASE_URL": judge.url,
        "ROUTEGATE_JUDGE__MODEL": "fake-judge",
        "ROUTEGATE_LOG_LEVEL": "warning",
    }
    model = args.model or f"router-{args.router}-50%"
    decisions: list[tuple[str, str]] = []
    rows = []
    try:
        with running_proxy(env, workdir, ready_timeout=300) as proxy:
            client = OpenAI(base_url=proxy.api, api_key="unused", max_retries=0)
            points = iter(checkpoints)
            point = next(points, None)
            for sent in tqdm(range(args.requests + 1), desc="replay"):
                while point is not None and point == sent:
                    deadline = time.monotonic() + 60
                    counts = judged_counts(proxy.metrics(), args.router)
                    while counts.judged + counts.unparsable < sent:  # every shadow job so far has ended
                        if time.monotonic() > deadline:
                            raise RuntimeError("shadow jobs did not finish")
                        time.sleep(0.05)
                        counts = judged_counts(proxy.metrics(), args.router)
                    rows.append((sent, quality(counts)))
                    point = next(points, None)
                if sent == args.requests:
                    break
                prompt = prompts[sent]
                reply = client.chat.completions.with_raw_response.create(
                    model=model, messages=[{"role": "user", "content": prompt}]
                )
                decisions.append((ids[prompt], reply.headers["x-routegate-tier"]))
            out = args.export or workdir / "feedback-export.jsonl"
            exported = subprocess.run(
                [sys.executable, "-m", "server.cli", "feedback", "export", "--db", str(db), "--out", str(out)],
                cwd=REPO,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
    finally:
        for server in (strong, weak, judge):
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    truth = true_retained(decisions, scores)
    strong_share = sum(tier == "strong" for _, tier in decisions) / len(decisions)
    print(f"\n{args.data.name} train, {args.strong} vs {args.weak}; {model}: strong share {strong_share:.3f}")
    print(f"true quality retained of the {len(decisions)} replayed requests: {truth:.3f}\n")
    print("| judged | estimated retained | 95% interval | contains true | regret | waste |")
    print("|---:|---:|---|:---:|---:|---:|")
    figures = []
    for judged, found in rows:
        inside = found.retained_low is not None and found.retained_low <= truth <= found.retained_high
        interval = "-" if found.retained_low is None else f"[{found.retained_low:.3f}, {found.retained_high:.3f}]"
        estimate = "-" if found.retained is None else f"{found.retained:.3f}"
        regret = "-" if found.regret_rate is None else f"{found.regret_rate:.3f}"
        waste = "-" if found.waste_rate is None else f"{found.waste_rate:.3f}"
        contains = "-" if found.retained is None else "yes" if inside else "no"
        print(f"| {judged} | {estimate} | {interval} | {contains} | {regret} | {waste} |")
        figures.append({"judged_requests": judged, **found.__dict__})
    if args.export:  # otherwise it was written to the work folder, removed above
        print(f"\nexport: {exported}")
    if args.out:
        args.out.write_text(json.dumps({"true_retained": truth, "strong_share": strong_share, "points": figures}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
