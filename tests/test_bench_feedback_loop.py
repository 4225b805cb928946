"""bench/feedback_loop.py on a small data set it is given: once every replayed request is judged,
the estimate (from the judge's verdicts, through routegate's metrics) equals the data's true
quality retained."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def test_the_estimate_of_a_fully_judged_replay_is_the_true_value(tmp_path: Path) -> None:
    draw = random.Random(7)
    records = [
        {
            "id": f"toy/{index}",
            "prompt": f"Toy question {index}?",
            "split": "train",
            "scores": {"big": float(draw.random() < 0.8), "small": float(draw.random() < 0.5)},
        }
        for index in range(40)
    ]
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in records))
    out = tmp_path / "figures.json"
    run = subprocess.run(
        [
            sys.executable,
            "bench/feedback_loop.py",
            "--data",
            str(data),
            "--strong",
            "big",
            "--weak",
            "small",
            "--router",
            "random",
            "--requests",
            "30",
            "--checkpoints",
            "0,10,30",
            "--out",
            str(out),
            "--export",
            str(tmp_path / "export.jsonl"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(out.read_text())
    points = {point["judged_requests"]: point for point in figures["points"]}
    assert sorted(points) == [0, 10, 30]
    assert points[0]["retained"] is None and points[10]["judged"] == 10
    assert points[30]["retained"] == pytest.approx(figures["true_retained"], rel=1e-12)
    assert "export:" in run.stdout and "30 records" in run.stdout
    assert len((tmp_path / "export.jsonl").read_text().splitlines()) == 30
