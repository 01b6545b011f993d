"""Every PromQL expression the project ships: dashboard panels and variables, recording rules, alert rules.

Used by the end-to-end test (each must run against a real Prometheus scraping the real exporter) and by the
structural tests (each must parse, each metric it names must be in the catalogue). Template variables are
replaced with concrete values, so the expressions run outside Grafana.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import NamedTuple

import yaml

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = [ROOT / "grafana" / "dashboards" / f"{name}.json" for name in ("activity", "library", "api")]
RULE_FILES = [ROOT / "prometheus" / "rules" / "recording.yml", ROOT / "prometheus" / "rules" / "alerts.yml"]

#: Grafana's built-in and the dashboards' own variables -> what the tests put in their place.
DEFAULT_VALUES = {
    "__range": "1h",
    "__rate_interval": "1m",
    "__interval": "1m",
    "user": ".*",
    "window": "7d",
    "instance": ".*",
    "datasource": "activity-prometheus",
}


class Query(NamedTuple):
    """One expression: ``source`` says where it came from, ``kind`` is panel | variable | record | alert."""

    source: str
    expr: str
    kind: str


_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace ``$var``, ``${var}`` and ``[[var]]``; ``$1``-style regex back-references are left alone.

    An unknown variable raises KeyError, so a dashboard cannot use a variable the tests do not know about.
    """

    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name.isdigit():
            return m.group(0)
        return values[name]

    return _VAR.sub(repl, expr)


def _label_values_selector(query: str) -> str | None:
    """``label_values(metric{...}, label)`` -> ``metric{...}`` (the series the variable reads)."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query)
    return m.group(1) if m else None


def dashboard_queries(job: str = "activity-exporter", values: dict[str, str] | None = None) -> list[Query]:
    """Panel targets and query-variable selectors of the three bundled dashboards, variables substituted."""
    vals = {**DEFAULT_VALUES, "job": job, **(values or {})}
    out: list[Query] = []
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        for var in dash.get("templating", {}).get("list", []):
            if var.get("type") != "query":
                continue
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            selector = _label_values_selector(q)
            if selector:
                out.append(Query(f"{path.name}: variable ${var['name']}", substitute(selector, vals), "variable"))
        panels = list(dash["panels"])
        for p in dash["panels"]:
            panels.extend(p.get("panels", []))  # collapsed rows keep their panels inside
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    where = f"{path.name}: panel {p['id']} '{p['title']}' target {t['refId']}"
                    out.append(Query(where, substitute(t["expr"], vals), "panel"))
    return out


def rule_queries() -> list[Query]:
    """Every recording and alert rule expression, as written in prometheus/rules/."""
    out: list[Query] = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "record" in rule:
                    out.append(Query(f"{path.name}: record {rule['record']}", rule["expr"].strip(), "record"))
                else:
                    out.append(Query(f"{path.name}: alert {rule['alert']}", rule["expr"].strip(), "alert"))
    return out


def all_queries(job: str = "activity-exporter", values: dict[str, str] | None = None) -> list[Query]:
    """Dashboard expressions (with ``$job`` -> ``job``) followed by every recording and alert rule expression."""
    return dashboard_queries(job, values) + rule_queries()


#: Words in PromQL that look like metric names but are not.
_PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "topk", "bottomk", "quantile", "stddev", "stdvar", "group", "count_values",
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool",
    "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile", "label_replace", "label_join",
    "clamp_min", "clamp_max", "clamp", "ceil", "floor", "round", "abs", "scalar", "vector", "time", "sort",
    "sort_desc", "avg_over_time", "max_over_time", "min_over_time", "sum_over_time", "count_over_time",
    "last_over_time", "absent", "absent_over_time", "changes", "resets", "timestamp", "inf", "nan", "le",
}


def metric_names(expr: str) -> set[str]:
    """Metric (and recorded series) names an expression selects: identifiers outside strings, braces and
    grouping clauses that are not functions or keywords."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values and label_replace arguments
    s = re.sub(r"\{[^}]*\}", "{}", s)  # label matchers
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)  # label lists
    s = re.sub(r"\[[^\]]*\]", "[]", s)  # range durations
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)", s):
        word = m.group(1)
        rest = s[m.end():].lstrip()
        if word in _PROMQL_WORDS or rest.startswith("("):
            continue
        if re.fullmatch(r"\d+[smhdwy]", word):
            continue
        names.add(word)
    return names


if __name__ == "__main__":  # a readable listing: python tests/e2e_queries.py
    for q in all_queries():
        print(f"[{q.kind}] {q.source}\n    {q.expr}")
