"""The PromQL of the Grafana dashboard and the alert rules, ready to send to Prometheus."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import yaml

from tests.conftest import REPO

DASHBOARD = REPO / "config/grafana/dashboards/routegate.json"
ALERT_RULES = REPO / "config/prometheus/alerts.yml"
QUALITY_PANELS = "Quality: "  # title prefix of the shadow-judging panels (tests/test_feedback_prometheus.py)
_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")
_ALERT_THRESHOLD = re.compile(r"\s*(?:>|<|>=|<=|==)\s*[0-9.]+\s*$")
_TRAFFIC_GUARD = re.compile(r"\nand on \(")  # at the start of a line: the whole comparison's guard


@dataclass(frozen=True)
class PanelQuery:
    """One query of one panel."""

    panel: str
    panel_type: str
    legend: str
    expr: str


def substitute(expr: str, variables: dict[str, str], rate_interval: str, time_range: str) -> str:
    """``expr`` with Grafana's variables replaced by concrete values."""
    expr = expr.replace("$__rate_interval", rate_interval).replace("$__range", time_range)
    for name, value in variables.items():
        expr = expr.replace(f"${name}", value)
    assert "$" not in expr.replace("$labels", ""), f"unsubstituted variable in {expr}"
    return expr


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panel_queries() -> list[PanelQuery]:
    """Every panel query of the dashboard, in panel order."""
    return [
        PanelQuery(panel["title"], panel["type"], target.get("legendFormat", ""), target["expr"])
        for panel in dashboard()["panels"]
        for target in panel["targets"]
    ]


def variable_queries() -> dict[str, str]:
    """Each template variable's ``label_values(selector, label)`` as PromQL: ``count by (label) (selector)``."""
    queries = {}
    for variable in dashboard()["templating"]["list"]:
        match = _LABEL_VALUES.match(variable["query"]["query"])
        assert match, variable["query"]
        queries[variable["name"]] = f"count by ({match['label']}) ({match['selector']})"
    return queries


def alert_rules() -> dict[str, dict]:
    """Alerting and recording rules by name (``alert`` or ``record``)."""
    groups = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    return {rule.get("alert") or rule["record"]: rule for group in groups for rule in group["rules"]}


def without_threshold(expr: str) -> str:
    """An alert expression without its ``> threshold`` comparison and the ``and on (...)``
    traffic guard after it: the value it compares."""
    compared = _TRAFFIC_GUARD.split(expr.strip(), maxsplit=1)[0]
    stripped = _ALERT_THRESHOLD.sub("", compared)
    assert stripped != compared, f"no trailing threshold in {expr}"
    return stripped
