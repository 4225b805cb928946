"""``POST /v1/feedback``: a user's score for one answered request, by its ``x-request-id``.

Body: ``{"request_id": str, "score": 0..1}`` or ``{"request_id": str, "rating": "up"|"down"}``,
optional ``"comment"``. A repeat overwrites; an unknown or expired id is a 404.
"""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from server import feedback_metrics as fm
from server.chat_request import read_body
from server.errors import APIError, bad_request
from server.feedback_store import FeedbackRow, FeedbackStore, StoreUnavailable
from server.openapi import ERROR_SCHEMA

MAX_BODY_BYTES = 32 * 1024  # the longest comment as clients may escape it (12 bytes an emoji) and the rest
MAX_REQUEST_ID = 128  # as the proxy accepts a client's x-request-id
MAX_COMMENT = 2000
RATING_SCORES = {"up": 1.0, "down": 0.0}
FIELDS = frozenset({"request_id", "score", "rating", "comment"})

FEEDBACK_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["request_id"],
                    "additionalProperties": False,
                    "properties": {
                        "request_id": {"type": "string", "minLength": 1, "maxLength": MAX_REQUEST_ID},
                        "score": {"type": "number", "minimum": 0, "maximum": 1},
                        "rating": {"type": "string", "enum": sorted(RATING_SCORES)},
                        "comment": {"type": ["string", "null"], "maxLength": MAX_COMMENT},
                    },
                    "oneOf": [{"required": ["score"]}, {"required": ["rating"]}],
                }
            }
        },
    },
    "responses": {
        "200": {
            "description": "feedback stored",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["object", "request_id", "score"],
                        "properties": {
                            "object": {"type": "string", "enum": ["feedback"]},
                            "request_id": {"type": "string"},
                            "score": {"type": "number"},
                            "rating": {"type": ["string", "null"]},
                        },
                    }
                }
            },
        },
        **{
            status: {"description": description, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
            for status, description in (
                ("400", "invalid body"),
                ("401", "missing or wrong client key"),
                ("404", "no such request (unknown, or older than the retention)"),
                ("408", "body not received in time"),
                ("413", "body too large"),
                ("415", "compressed body (send it uncompressed)"),
                ("503", "the feedback store is off or unavailable"),
            )
        },
    },
}


def parse_feedback(body: bytes) -> tuple[str, float, str | None, str | None]:
    """The request id, score, rating and comment of a feedback body; 400 when it is invalid."""
    try:
        payload = json.loads(body.decode("utf-8-sig"))  # strict: bytes would pass encoded surrogates
    except (ValueError, RecursionError):
        raise bad_request("The body must be valid JSON.", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise bad_request("The body must be a JSON object.", code="invalid_type")
    unknown = sorted(set(payload) - FIELDS)
    if unknown:
        name = _printable(unknown[0][:64])
        raise bad_request(f"Unrecognized parameter: '{name}'.", param=name, code="unknown_parameter")
    request_id = payload.get("request_id")
    if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_REQUEST_ID:
        raise bad_request(
            f"'request_id' must be a string of 1 to {MAX_REQUEST_ID} characters (the answer's x-request-id).",
            param="request_id",
            code="invalid_value",
        )
    score, rating = payload.get("score"), payload.get("rating")
    if (score is None) == (rating is None):
        raise bad_request(
            "Send exactly one of 'score' (0 to 1) and 'rating' ('up' or 'down').", param="score", code="invalid_value"
        )
    if rating is not None:
        if not isinstance(rating, str) or rating not in RATING_SCORES:
            raise bad_request("'rating' must be 'up' or 'down'.", param="rating", code="invalid_value")
        score = RATING_SCORES[rating]
    elif isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 1:  # NaN is out of range too
        raise bad_request("'score' must be a number from 0 to 1.", param="score", code="invalid_value")
    comment = payload.get("comment")
    if comment is not None and (not isinstance(comment, str) or len(comment) > MAX_COMMENT):
        message = f"'comment' must be a string of at most {MAX_COMMENT} characters."
        raise bad_request(message, param="comment", code="invalid_value")
    if comment is not None:  # no NUL or lone surrogate reaches the database
        comment = _printable(comment.replace("\x00", ""))
    return request_id, float(score), rating, comment


def _printable(text: str) -> str:
    """``text`` with any lone surrogate (valid in a JSON escape, not in UTF-8) replaced by '?'."""
    return text.encode("utf-8", "replace").decode("utf-8")


async def handle_feedback(request: Request, store: FeedbackStore | None, body_timeout: float, client: str = "") -> JSONResponse:
    """Store one feedback; 404 for an unknown or expired request id, or one of another ``client``'s."""
    body = await read_body(request, MAX_BODY_BYTES, body_timeout)
    request_id, score, rating, comment = parse_feedback(body)
    if store is None:
        raise APIError(
            503,
            "Feedback is off: ROUTEGATE_FEEDBACK_DB=off, or ROUTEGATE_MODELS is set (the store keeps the two tiers only).",
            type="server_error",
            code="feedback_off",
        )
    known = request_id.isprintable()  # routegate never issues other ids
    try:
        if known:
            known = await store.record_feedback(FeedbackRow(request_id, time.time(), score, rating, comment), client)
    except StoreUnavailable:
        raise APIError(
            503,
            "The feedback store is unavailable; try again later.",
            type="server_error",
            code="feedback_unavailable",
            headers={"retry-after": "1"},
        ) from None
    if not known:
        raise APIError(
            404,
            "No answered request with this request_id (or it is older than the retention).",
            param="request_id",
            code="request_not_found",
        )
    fm.FEEDBACK.labels(rating or "score").inc()
    return JSONResponse({"object": "feedback", "request_id": request_id, "score": score, "rating": rating})
