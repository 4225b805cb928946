"""The OpenAPI description of ``POST /v1/chat/completions`` (the handler reads the raw body, so
FastAPI cannot derive it): the part of OpenAI's schema that routegate checks, plus its answers."""

from __future__ import annotations

from typing import Any

from server.chat_request import FIELD_TYPES, RANGES, ROLES

#: the OpenAI-style error body, as a JSON schema
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"type": "string", "enum": sorted(ROLES)},
        "content": {
            "anyOf": [
                {"type": "string"},
                {
                    "type": "array",
                    "items": {"type": "object", "required": ["type"], "properties": {"type": {"type": "string"}}},
                },
                {"type": "null"},
            ]
        },
    },
}
# JSON Schema for each Python type the request checks accept (a bool is no number here either).
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}


def _field_schema(name: str) -> dict[str, object]:
    """The schema of one checked top-level field, from the same table the handler checks with."""
    types, _ = FIELD_TYPES[name]
    names = ["number"] if float in types else [_JSON_TYPES[kind] for kind in types]
    schema: dict[str, object] = {"type": [*names, "null"]}  # null means "not given", as in OpenAI's API
    low, high = RANGES.get(name, (None, None))
    if low is not None:
        schema["minimum"] = low
    if high is not None and high != float("inf"):
        schema["maximum"] = high
    return schema


_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string", "minLength": 1},
        "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
        **{name: _field_schema(name) for name in FIELD_TYPES},
        "tools": {"type": "array", "items": {"type": "object"}},
    },
    "additionalProperties": True,
}
_DECISION_HEADERS = {
    name: {"schema": {"type": "string"}, "description": description}
    for name, description in {
        "x-routegate-router": "router that decided (none for an upstream model named directly)",
        "x-routegate-tier": "strong or weak: the tier that answered (ROUTEGATE_MODELS: the entry's name)",
        "x-routegate-upstream": "the upstream that answered: its tier or ROUTEGATE_MODELS entry name",
        "x-routegate-model": "the upstream model that answered",
        "x-routegate-score": "the router's score: the strong (most capable) model's predicted probability of "
        "beating the weak (cheapest) one (scored requests)",
        "x-routegate-threshold": "the threshold it was compared with (routed requests)",
        "x-routegate-predicted-quality": "among three or more models, a scored request: the chosen model's "
        "predicted probability of not being beaten by the most capable one",
        "x-request-id": "the client's request id, or a new one",
    }.items()
}


def chat_completion_openapi(models: list[str]) -> dict[str, object]:
    """The operation's OpenAPI description for a gateway that serves ``models`` (other names get 404)."""
    model = {
        "anyOf": [{"type": "string", "enum": models}, {"type": "string", "minLength": 1}],
        "description": "router-<router>-<threshold>, an alias, or an upstream model",
    }
    request = {**_REQUEST, "properties": {**_REQUEST["properties"], "model": model}}
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
        "responses": {
            "200": {
                "description": "The upstream's answer, as it sent it (JSON, or server-sent events when stream is true).",
                "headers": _DECISION_HEADERS,
                "content": {
                    "application/json": {"schema": {"type": "object"}},
                    "text/event-stream": {"schema": {"type": "string"}},
                },
            },
            **{
                status: {"description": description, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
                for status, description in {
                    "400": "invalid request",
                    "401": "missing or wrong client key",
                    "404": "unknown model",
                    "408": "request body not received in time",
                    "413": "body too large",
                    "415": "compressed body (send it uncompressed)",
                    "431": "request headers too large",
                    "429": "upstream rate limit, or routegate at its concurrency limit (Retry-After)",
                    "502": "upstream failed",
                    "503": "not ready, or shutting down",
                    "504": "upstream timed out",
                }.items()
            },
        },
    }
