"""What ``routegate serve`` imports never includes training or evaluation code."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from routers import registry
from tests.conftest import REPO

# Run in a fresh interpreter: the test session itself imports trainers and evaluation modules.
SERVE_IMPORTS = """
import json, sys
import server.app, server.cli
from routers.registry import load_router
from server.settings import load_settings

server.app.create_app(load_settings())
for name in sys.argv[1:]:
    load_router(name)
print(json.dumps(sorted(name for name in sys.modules if name.startswith("routers"))))
"""


def is_offline_module(name: str) -> bool:
    """Training or evaluation code: ``routers.training``, ``routers.evaluation`` or any router's own
    ``training`` / ``evaluation`` module."""
    parts = name.split(".")
    return parts[:2] in (["routers", "training"], ["routers", "evaluation"]) or (
        len(parts) == 3 and parts[2] in ("training", "evaluation")
    )


def test_serving_imports_no_training_or_evaluation_module() -> None:
    env = {**os.environ, "ROUTEGATE_ROUTER": "random"}
    routers = registry.available_routers()  # each loaded from its shipped checkpoint
    result = subprocess.run(
        [sys.executable, "-c", SERVE_IMPORTS, *routers], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert {f"routers.{name}.router" for name in routers} <= set(loaded)  # the routers did load
    assert [name for name in loaded if is_offline_module(name)] == []


def test_the_registry_names_each_router_with_its_trainer() -> None:
    assert registry.available_routers() == ["bert", "causal_llm", "lookahead", "mf", "random", "sw_ranking"]
    assert registry.trainable_routers() == ["bert", "causal_llm", "lookahead", "mf", "sw_ranking"]
    for name in registry.trainable_routers():
        trainer = registry.load_trainer(name)
        assert trainer.__name__ == f"routers.{name}.training"
        assert callable(trainer.add_arguments) and callable(trainer.run)
