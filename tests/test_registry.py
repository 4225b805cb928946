"""Which routers count as installed: a checkpoint folder, and its base model's package if it names one."""

from __future__ import annotations

import json
from pathlib import Path

from routers.registry import installed_routers


def test_a_router_whose_base_model_package_is_missing_is_not_installed(tmp_path: Path) -> None:
    (tmp_path / "mf").mkdir()
    (tmp_path / "causal_llm").mkdir()
    manifest = {"router": "causal_llm", "base_model": "package:no_such_package_for_routegate/model.gguf"}
    (tmp_path / "causal_llm" / "router.json").write_text(json.dumps(manifest))
    assert installed_routers(tmp_path) == ["mf", "random"]
    manifest["base_model"] = "package:json/model.gguf"  # an installed package: listed
    (tmp_path / "causal_llm" / "router.json").write_text(json.dumps(manifest))
    assert installed_routers(tmp_path) == ["causal_llm", "mf", "random"]
