"""A routing decision: an immutable value made once and passed along the request path."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    """Where one request goes and why. A fallback to another upstream is ``dataclasses.replace``.

    ``tier`` is the upstream's name: ``strong``/``weak`` with two tiers, else the
    ``ROUTEGATE_MODELS`` entry's. ``reason`` is ``direct`` (an upstream model named), ``forced``
    (an override), ``sticky``, ``score``, ``unscored`` (scoring overload) or ``budget`` (sent to
    the cheapest upstream: budget spent). ``quality`` (more than two models) is the chosen
    model's predicted probability of not being beaten by the most capable one, 1 - beaten.
    ``fallback_from`` is the upstream the decision chose when a fallback answers instead.
    """

    router: str
    tier: str
    reason: str
    request_id: str
    score: float | None = None
    threshold: float | None = None
    target: float | None = None
    effective_target: float | None = None
    sticky_key: str | None = None  # where a strong answer is remembered (route_on=sticky)
    quality: float | None = None
    beaten: tuple[float, ...] | None = None  # P(most capable beats m) per ladder model (more than two models)
    fallback_from: str | None = None

    @property
    def chosen(self) -> str:
        """The upstream the decision chose (``tier`` unless a fallback answers)."""
        return self.fallback_from or self.tier

    def headers(self, model: str) -> dict[str, str]:
        """The ``x-routegate-*`` headers that tell the client the decision."""
        headers = {
            "x-routegate-router": self.router,
            "x-routegate-tier": self.tier,
            "x-routegate-upstream": self.tier,
            "x-routegate-model": model,
            "x-routegate-decision": self.reason,
        }
        if self.quality is not None:
            headers["x-routegate-predicted-quality"] = f"{self.quality:.6f}"
        if self.score is not None:
            headers["x-routegate-score"] = f"{self.score:.6f}"
        if self.threshold is not None:
            headers["x-routegate-threshold"] = f"{self.threshold:g}"
        if self.target is not None:
            headers["x-routegate-target"] = f"{self.target:g}"
        if self.effective_target is not None:
            headers["x-routegate-effective-target"] = f"{self.effective_target:g}"
        return headers
