"""Per-request overrides for trusted clients: force a tier or a threshold with a header.

Off unless ``ROUTEGATE_ALLOW_OVERRIDES`` is true; with ``ROUTEGATE_OVERRIDE_KEYS`` set, only
requests bearing one of those client keys may override. Headers of clients that may not
override are ignored (the ``model`` they name is theirs unless ROUTEGATE_FIXED_ROUTES).
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.datastructures import Headers

from server.client_keys import bearer_matches
from server.errors import bad_request
from server.settings import Settings

FORCE_TIER_HEADER = "x-routegate-force-tier"
FORCE_THRESHOLD_HEADER = "x-routegate-force-threshold"


@dataclass(frozen=True)
class Override:
    """What a trusted client forced: a tier, or a threshold for this request."""

    tier: str | None = None
    threshold: float | None = None


NO_OVERRIDE = Override()


def trusted(headers: Headers, settings: Settings) -> bool:
    """Whether the request's client may override (ROUTEGATE_ALLOW_OVERRIDES, ROUTEGATE_OVERRIDE_KEYS)."""
    if not settings.allow_overrides:
        return False
    if not settings.override_keys:
        return True
    return bearer_matches(headers, settings.override_keys)


def read_override(headers: Headers, settings: Settings) -> Override:
    """The override a request asks for, if its client may override; 400 for a malformed value."""
    tier = headers.get(FORCE_TIER_HEADER)
    threshold_text = headers.get(FORCE_THRESHOLD_HEADER)
    if tier is not None and trusted(headers, settings):  # a tier wins over a threshold
        tier = tier.strip().lower()
        if tier not in ("strong", "weak"):
            raise bad_request(
                f"Header '{FORCE_TIER_HEADER}' must be 'strong' or 'weak'.", param=FORCE_TIER_HEADER, code="invalid_value"
            )
        return Override(tier=tier)
    if threshold_text is None or tier is not None or not trusted(headers, settings):
        return NO_OVERRIDE
    try:
        threshold = float(threshold_text)
    except ValueError:
        threshold = float("nan")
    if not 0.0 <= threshold <= 1.0:
        raise bad_request(
            f"Header '{FORCE_THRESHOLD_HEADER}' must be a number in [0, 1].", param=FORCE_THRESHOLD_HEADER, code="invalid_value"
        )
    return Override(threshold=threshold)
