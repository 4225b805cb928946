"""What a request's ``model`` names: a router with a threshold (``router-mf-0.5``) or a target
strong share (``router-mf-30%``), an alias of one, or an upstream model."""

from __future__ import annotations

import re
from dataclasses import dataclass

from routers.calibration import format_threshold
from server.errors import APIError, bad_request
from server.ladder import Ladder
from server.settings import ROUTER_MODEL, Settings

THRESHOLD = re.compile(r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)\Z")  # ASCII digits, no sign, exponent or spaces: float() takes more
DEFAULT_ALIAS = "auto"


@dataclass(frozen=True)
class Target:
    """Where a request goes: routed (``router`` and either ``threshold`` or a ``target`` strong
    share set) or straight to ``tier``."""

    router: str | None = None
    threshold: float | None = None
    tier: str | None = None
    target: float | None = None


class ModelNames:
    """Resolves ``model`` strings against the settings and the known routers."""

    def __init__(self, settings: Settings, routers: list[str], ladder: Ladder, listed_routers: list[str] | None = None) -> None:
        self.routers = routers  # the routers clients may name (ROUTEGATE_ROUTERS)
        #: those whose routes /v1/models lists: among several models, the routers that score each model
        self.listed_routers = routers if listed_routers is None else listed_routers
        self.target_share = settings.target_share
        self.threshold = settings.threshold
        self.fixed_routes = settings.fixed_routes  # clients name auto and the aliases only
        self.aliases = {DEFAULT_ALIAS: f"router-{settings.router}-{format_threshold(settings.threshold)}", **settings.aliases}
        #: listed upstream names: the two tiers' models, or each ROUTEGATE_MODELS entry's name
        self.upstream_models = {settings.weak.model: "weak", settings.strong.model: "strong"}
        #: also accepted: an entry's upstream model (the first entry with it)
        self.upstream_aliases: dict[str, str] = {}
        if settings.models:
            self.upstream_models = {name: name for name in ladder.names}
            for entry in settings.models:
                self.upstream_aliases.setdefault(entry.model, entry.name)

    def resolve(self, model: str) -> Target:
        """The target for ``model``; 400 for a bad router or threshold, 404 for an unknown name."""
        if model in self.aliases:
            return self._parse_router_model(self.aliases[model], param="model")
        if model.startswith("router-"):
            return self._parse_router_model(model, param="model")
        if model in self.upstream_models:
            return Target(tier=self.upstream_models[model])
        if model in self.upstream_aliases:
            return Target(tier=self.upstream_aliases[model])
        raise APIError(
            404,
            f"The model '{model[:200]}' does not exist. Valid models: {', '.join(self.listed())}.",
            param="model",
            code="model_not_found",
        )

    def check_alias(self, model: str) -> None:
        """A 403 for a name that is not ``auto`` or an alias (ROUTEGATE_FIXED_ROUTES: the
        thresholds, shares and upstreams clients use are the operator's)."""
        if model not in self.aliases:
            raise APIError(
                403,
                f"This gateway serves only its own routes: use one of {', '.join(self.aliases)} instead of '{model[:200]}'.",
                param="model",
                code="model_not_allowed",
            )

    def _parse_router_model(self, model: str, param: str) -> Target:
        match = ROUTER_MODEL.match(model)
        if match is None:
            raise bad_request(
                f"'{model[:200]}' is not of the form router-<router>-<threshold> or router-<router>-<percent>%.",
                param=param,
                code="invalid_model",
            )
        router = match["router"]
        if router not in self.routers:
            raise bad_request(
                f"Unknown router '{router[:64]}'. Known routers: {', '.join(self.routers)}.", param=param, code="unknown_router"
            )
        if match["threshold"].endswith("%"):
            return Target(router=router, target=_parse_percent(match["threshold"], param))
        threshold = float(match["threshold"]) if THRESHOLD.match(match["threshold"]) else float("nan")
        if not 0.0 <= threshold <= 1.0:
            raise bad_request(
                f"Threshold '{match['threshold'][:32]}' must be a number in [0, 1].", param=param, code="invalid_threshold"
            )
        return Target(router=router, threshold=threshold)

    def serves(self, model: str, route: Target) -> bool:
        """Whether ``model`` (naming ``route``) is listed to clients: its router is one of the listed
        ones (an upstream named directly always is), and with ROUTEGATE_FIXED_ROUTES it is an alias."""
        if self.fixed_routes and model not in self.aliases:
            return False
        return route.router is None or route.router in self.listed_routers

    def listed(self) -> list[str]:
        """Every name a client may send: aliases, one router model per router, upstream models
        (aliases only with ROUTEGATE_FIXED_ROUTES)."""
        if self.fixed_routes:
            return list(self.aliases)
        threshold, share = format_threshold(self.threshold), format_percent(self.target_share)
        router_models = [f"router-{router}-{threshold}" for router in self.listed_routers]  # auto's may be a target
        target_models = [f"router-{router}-{share}" for router in self.listed_routers]
        return list(dict.fromkeys([*self.aliases, *router_models, *target_models, *self.upstream_models]))  # each once


def format_percent(share: float) -> str:
    """A share in [0, 1] as the ``<percent>%`` of a target model string (0.3 -> ``30%``)."""
    return f"{round(share * 100)}%"


def _parse_percent(text: str, param: str) -> float:
    """A whole percent in [0, 100] as a share: at most 101 target routes per router can exist."""
    digits = text[:-1]
    significant = digits.lstrip("0") or "0"  # int() refuses thousands of digits; leading zeros are fine
    if not (digits.isascii() and digits.isdigit() and len(significant) <= 3 and int(significant) <= 100):
        raise bad_request(
            f"Target share '{text[:32]}' must be a whole percentage in [0, 100], e.g. 30%.", param=param, code="invalid_target"
        )
    return int(significant) / 100.0
