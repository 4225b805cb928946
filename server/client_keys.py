"""Client keys as requests present them: ``Authorization: Bearer <key>``."""

from __future__ import annotations

import hashlib
import hmac

from pydantic import SecretStr
from starlette.datastructures import Headers


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
