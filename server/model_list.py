"""``ROUTEGATE_MODELS``: several upstreams to route among, checked, and the two-tier shorthand
(``ROUTEGATE_STRONG__*`` / ``ROUTEGATE_WEAK__*``) seen as the same kind of list.

An entry's ``name`` is how headers, metrics and clients name that upstream, so names are short,
label-safe and unique; ``model`` is what is sent upstream. The list is the operator's, but it
becomes a metrics label, so it is bounded by ``MAX_MODELS``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.settings import ModelEntry, Settings

MAX_MODELS = 16
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")  # the whole name: fullmatch
#: names that already mean something: a request's ``model`` (``auto``), or the tier label of refused requests (``none``)
RESERVED = ("auto", "none")


def check_name(name: str) -> str:
    """``name`` when usable as an upstream's name; ValueError saying why not."""
    if not NAME.fullmatch(name):
        raise ValueError(
            f"name {name[:80]!r} must be 1-64 letters, digits, '.', '_', ':' or '-', starting with a letter or digit"
        )
    if name in RESERVED or name.startswith("router-"):
        raise ValueError(
            f"name {name!r} is reserved (`auto` and `router-...` are routed model names; `none` labels refused requests)"
        )
    return name


def check_models(entries: Sequence[ModelEntry]) -> None:
    """ValueError unless ``entries`` is empty (two tiers) or 2..MAX_MODELS entries with unique names."""
    if len(entries) == 1:
        raise ValueError("needs at least two models to route among (or none, for ROUTEGATE_STRONG__* / ROUTEGATE_WEAK__*)")
    if len(entries) > MAX_MODELS:
        raise ValueError(f"at most {MAX_MODELS} models")
    seen: set[str] = set()
    for entry in entries:
        if entry.name.lower() in seen:
            raise ValueError(f"name {entry.name!r} appears twice (names are compared case-insensitively)")
        seen.add(entry.name.lower())
    for entry in entries:  # a client naming that model would reach the entry named so, not the one serving it
        for other in entries:
            if other is not entry and other.model == entry.name:
                raise ValueError(f"name {entry.name!r} is the model of entry {other.name!r}: give one of them another name")
    capable = [entry.name for entry in entries if entry.most_capable]
    if len(capable) > 1:
        raise ValueError(f"at most one model may set most_capable; {capable} do")


def model_ladder(settings: Settings) -> list[ModelEntry]:
    """The upstreams to route among, cheapest first by ``input_price + output_price`` (ties keep the
    configured order): ``ROUTEGATE_MODELS``, or the two tiers as entries named ``weak`` and
    ``strong`` (the most capable) when it is empty."""
    from server.settings import ModelEntry

    entries = list(settings.models) or [
        ModelEntry(name=tier, **getattr(settings, tier).model_dump(), router_model=router_model, most_capable=tier == "strong")
        for tier, router_model in (("weak", settings.router_weak_model), ("strong", settings.router_strong_model))
    ]
    return sorted(entries, key=lambda entry: entry.input_price + entry.output_price)
