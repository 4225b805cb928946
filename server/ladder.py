"""The upstreams one gateway routes among, as a ladder: cheapest first, one of them the most capable.

``ROUTEGATE_MODELS`` entries, or the two tiers as the ladder ``weak``, ``strong`` (``strong`` the
most capable). The most capable entry is the one that sets ``most_capable``, else the dearest.
Capability order is the price order with the most capable moved last: fallback climbs it, and a
sticky conversation never goes down it. With two entries everything is the two-tier rule: the
most capable plays ``strong``, the other ``weak``.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.model_list import model_ladder
from server.settings import ModelEntry, Settings


@dataclass(frozen=True)
class Ladder:
    """The upstream entries, cheapest first, and which of them is the most capable."""

    entries: tuple[ModelEntry, ...]
    best: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Ladder:
        entries = tuple(model_ladder(settings))
        marked = [entry.name for entry in entries if entry.most_capable]
        return cls(entries, marked[0] if marked else entries[-1].name)

    @property
    def names(self) -> list[str]:
        """Entry names, cheapest first."""
        return [entry.name for entry in self.entries]

    @property
    def pair(self) -> bool:
        """Two models: routed by the pair score (``strong`` when score >= t), as with two tiers."""
        return len(self.entries) == 2

    @property
    def cheapest(self) -> str:
        """The cheapest entry other than the most capable (two tiers: ``weak``)."""
        return next(entry.name for entry in self.entries if entry.name != self.best)

    @property
    def cheapest_index(self) -> int:
        """The ``cheapest`` entry's position in price order."""
        return self.names.index(self.cheapest)

    @property
    def lowest_price(self) -> str:
        """The cheapest entry by price, the most capable included: what the daily budget does not
        count, and all that is used once it is spent (two tiers: ``weak``, unless priced above ``strong``)."""
        return self.names[0]

    @property
    def best_index(self) -> int:
        """The most capable entry's position in price order."""
        return self.names.index(self.best)

    @property
    def prices(self) -> list[float]:
        """Each entry's input + output price per 1M tokens, cheapest first (the policy's price order)."""
        return [entry.input_price + entry.output_price for entry in self.entries]

    def entry(self, name: str) -> ModelEntry:
        return self.entries[self.names.index(name)]

    def by_capability(self) -> list[str]:
        """Entry names from least to most capable: price order, the most capable last."""
        return [name for name in self.names if name != self.best] + [self.best]

    def rank(self, name: str) -> int:
        """``name``'s place in capability order (0: least capable)."""
        return self.by_capability().index(name)

    def fallbacks(self, name: str) -> list[str]:
        """Where a request goes when ``name`` fails: each more capable entry in turn; the most
        capable falls back to the next less capable (two tiers: strong <-> weak)."""
        order = self.by_capability()
        position = order.index(name)
        return order[position + 1 :] if position + 1 < len(order) else order[-2:-1]
