"""Start-up check: an upstream without an API key is most likely a set-up mistake, so say so."""

from __future__ import annotations

import logging

from server.model_list import model_ladder
from server.settings import Settings

log = logging.getLogger("routegate")


def missing_key_warnings(settings: Settings) -> list[str]:
    """One line per upstream (each tier, or each ``ROUTEGATE_MODELS`` entry) without an API key,
    and for a shadow judge on a URL of its own without one, naming the setting to fix, never a key."""
    lines = [
        f"the {entry.name} upstream ({entry.base_url}, model {entry.model}) has no API key: requests go without "
        f"Authorization; set {_key_setting(settings, entry.name)} (or OPENAI_API_KEY for the OpenAI API)"
        for entry in model_ladder(settings)
        if entry.api_key is None
    ]
    if settings.shadow_rate > 0 and settings.judge_api_key is None and settings.judge_base_url != settings.strong.base_url:
        lines.append(
            f"the judge ({settings.judge_base_url}) has no API key: judgements go without Authorization, and each "
            "shadow call is paid for before its judgement; set ROUTEGATE_JUDGE__API_KEY (or OPENAI_API_KEY for the OpenAI API)"
        )
    return lines


def _key_setting(settings: Settings, name: str) -> str:
    """The setting that gives upstream ``name`` its key."""
    if settings.models:
        return f"api_key of the ROUTEGATE_MODELS entry '{name}'"
    return f"ROUTEGATE_{name.upper()}__API_KEY"


def warn_missing_keys(settings: Settings) -> None:
    """Log ``missing_key_warnings`` at WARNING."""
    for line in missing_key_warnings(settings):
        log.warning(line)
