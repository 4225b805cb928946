"""Read values back from Prometheus text exposition."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

SUFFIXES = ("_total", "_created", "_sum", "_count", "_bucket")


def metric_sum(text: str, name: str, allow_absent: bool = False, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``. A metric the text does
    not declare at all (a renamed or unexported one, a misspelt name) is an AssertionError unless
    ``allow_absent``, so that "it stayed 0" cannot pass for a metric that is not there; so is a
    label no sample of it has."""
    total = 0.0
    declared = False
    keys: set[str] = set()
    for family in text_string_to_metric_families(text):
        if family.name == name or any(name == family.name + suffix for suffix in SUFFIXES):
            declared = True
        for sample in family.samples:
            if sample.name == name:
                keys |= set(sample.labels)
                if all(sample.labels.get(key) == value for key, value in labels.items()):
                    total += sample.value
    assert declared or allow_absent, f"no metric {name} in the exposition"
    keys = keys or _declared_labels(name)  # a metric without samples yet: the labels routegate declares for it
    assert not keys or set(labels) <= keys, f"{name} has no label {sorted(set(labels) - keys)} (its labels: {sorted(keys)})"
    return total


def _declared_labels(name: str) -> set[str]:
    """The label names (and ``le`` of a histogram's buckets) routegate's metric ``name`` is declared with; none for another."""
    from prometheus_client import REGISTRY

    import server.feedback_metrics
    import server.metrics  # noqa: F401  (both declare their metrics in prometheus_client's registry)

    collector = REGISTRY._names_to_collectors.get(name)
    if collector is None:
        return set()
    return set(getattr(collector, "_labelnames", ())) | ({"le"} if name.endswith("_bucket") else set())
