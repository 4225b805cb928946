"""Client keys as requests present them: ``Authorization: Bearer <key>``."""

from __future__ import annotations

import hashlib
import hmac

from pydantic import SecretStr
from starlette.datastructures import Headers

#: a client or metrics key shorter than this could be found by trying keys: against the gateway,
#: or (a client key) against its fingerprint in the feedback store or Redis
MIN_KEY_CHARS = 20


def presented_key(headers: Headers) -> tuple[str, str]:
    """The scheme and the key (spaces around it dropped) of a request's ``Authorization`` header."""
    scheme, _, given = headers.get("authorization", "").partition(" ")
    return scheme, given.strip()


FINGERPRINT_CHARS = 16  # hex characters of the sha256 of a client key: who sent a request, never the key


def client_fingerprint(headers: Headers, keys: list[SecretStr]) -> str:
    """Who sent a request: a fingerprint of its client key; empty without client keys (any caller
    is then every caller)."""
    if not keys:
        return ""
    return hashlib.sha256(presented_key(headers)[1].encode()).hexdigest()[:FINGERPRINT_CHARS]


def bearer_matches(headers: Headers, keys: list[SecretStr]) -> bool:
    """Whether the request's ``Authorization: Bearer`` key is one of ``keys`` (each compared in constant time)."""
    scheme, given = presented_key(headers)
    given_bytes = given.encode()
    matched = False
    for key in keys:  # every key compared, whatever matches
        matched |= hmac.compare_digest(given_bytes, key.get_secret_value().encode())
    return scheme.lower() == "bearer" and matched


def short_key_warnings(api_keys: list[SecretStr], metrics_key: SecretStr | None) -> list[str]:
    """One line per client or metrics key under ``MIN_KEY_CHARS`` characters, by its place in its
    setting, never its value or length: such a key could be found by trying keys against the
    gateway, and a client key also against its fingerprint, which the feedback store and Redis keep."""
    named = [(f"ROUTEGATE_API_KEYS[{place}]", key) for place, key in enumerate(api_keys)]
    named += [("ROUTEGATE_METRICS_KEY", metrics_key)] if metrics_key is not None else []
    return [
        f"{name} is under {MIN_KEY_CHARS} characters: use {MIN_KEY_CHARS} or more random characters "
        "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        for name, key in named
        if len(key.get_secret_value()) < MIN_KEY_CHARS
    ]
