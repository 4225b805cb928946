"""The OpenAPI description of ``POST /v1/chat/completions`` (the handler reads the raw body, so
FastAPI cannot derive it): the part of OpenAI's schema that routegate checks, plus its answers."""

from __future__ import annotations

_ERROR = {
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
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool", "function"]},
        "content": {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "object"}},
                {"type": "null"},
            ]
        },
    },
}
_REQUEST = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string", "minLength": 1, "description": "router-<router>-<threshold>, an alias, or an upstream model"},
        "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
        "stream": {"type": "boolean"},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "n": {"type": "integer", "minimum": 1, "maximum": 128},
        "max_tokens": {"type": "integer", "minimum": 1},
        "tools": {"type": "array", "items": {"type": "object"}},
        "response_format": {"type": "object"},
    },
    "additionalProperties": True,
}
_DECISION_HEADERS = {
    name: {"schema": {"type": "string"}, "description": description}
    for name, description in {
        "x-routegate-router": "router that decided (none for an upstream model named directly)",
        "x-routegate-tier": "strong or weak: the tier that answered",
        "x-routegate-model": "the upstream model that answered",
        "x-routegate-score": "the router's score (routed requests)",
        "x-routegate-threshold": "the threshold it was compared with (routed requests)",
        "x-request-id": "the client's request id, or a new one",
    }.items()
}

CHAT_COMPLETION_OPENAPI = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": _REQUEST}}},
    "responses": {
        "200": {
            "description": "The upstream's answer, as it sent it (JSON, or server-sent events when stream is true).",
            "headers": _DECISION_HEADERS,
            "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {"schema": {"type": "string"}}},
        },
        **{
            status: {"description": description, "content": {"application/json": {"schema": _ERROR}}}
            for status, description in {
                "400": "invalid request",
                "401": "missing or wrong client key",
                "404": "unknown model",
                "413": "body too large",
                "429": "upstream rate limit",
                "502": "upstream failed",
                "503": "not ready",
                "504": "upstream timed out",
            }.items()
        },
    },
}
