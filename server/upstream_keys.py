"""Start-up check: an upstream without an API key is most likely a set-up mistake, so say so."""

from __future__ import annotations

import logging

from server.settings import Settings

log = logging.getLogger("routegate")


def missing_key_warnings(settings: Settings) -> list[str]:
    """One line per tier whose upstream has no API key (naming the setting, never a key)."""
    return [
        f"the {tier} upstream ({upstream.base_url}, model {upstream.model}) has no API key: requests go without "
        f"Authorization; set ROUTEGATE_{tier.upper()}__API_KEY (or OPENAI_API_KEY for the OpenAI API)"
        for tier, upstream in (("strong", settings.strong), ("weak", settings.weak))
        if upstream.api_key is None
    ]


def warn_missing_keys(settings: Settings) -> None:
    """Log ``missing_key_warnings`` at WARNING."""
    for line in missing_key_warnings(settings):
        log.warning(line)
