"""Prometheus config and rules checked by the real promtool (Debian's ``prometheus`` package).

promtool is the authority on syntax and on rule behaviour: ``check config`` / ``check rules`` parse what
Prometheus will load, ``test rules`` runs the unit tests in prometheus/tests/ (every alert fires in one case and
stays silent in another). Every dashboard query is parsed the same way, as a throwaway recording rule.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e_queries import dashboard_queries, rule_queries  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROM = ROOT / "prometheus"
PROMTOOL = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not found: install Debian's 'prometheus' package (apt-get install prometheus)")


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@needs_promtool
def test_check_config():
    r = promtool("check", "config", str(PROM / "prometheus.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 rule files found" in r.stdout + r.stderr


@needs_promtool
def test_check_rules():
    r = promtool("check", "rules", *map(str, sorted((PROM / "rules").glob("*.yml"))))
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_rule_unit_tests_pass():
    tests = sorted((PROM / "tests").glob("*.yml"))
    assert len(tests) >= 3
    r = promtool("test", "rules", *map(str, tests))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "FAILED" not in r.stdout + r.stderr


@needs_promtool
def test_rule_unit_tests_can_fail(tmp_path):
    """A broken threshold must make promtool fail, or the passing run above proves nothing."""
    rules = tmp_path / "rules"
    rules.mkdir()
    text = (PROM / "rules" / "alerts.yml").read_text()
    assert "== 0\n        for: 5m" in text
    (rules / "alerts.yml").write_text(text.replace("up{job=\"activity-exporter\"} == 0", "up{job=\"activity-exporter\"} == 2"))
    (rules / "recording.yml").write_text((PROM / "rules" / "recording.yml").read_text())
    tests = tmp_path / "tests"
    tests.mkdir()
    shutil.copy(PROM / "tests" / "alerts_test.yml", tests / "alerts_test.yml")
    r = promtool("test", "rules", str(tests / "alerts_test.yml"))
    assert r.returncode != 0 and "ActivityExporterDown" in r.stdout + r.stderr


def _alert_names() -> set[str]:
    names = set()
    for group in yaml.safe_load((PROM / "rules" / "alerts.yml").read_text())["groups"]:
        names |= {r["alert"] for r in group["rules"] if "alert" in r}
    return names


def test_every_alert_has_severity_summary_description():
    for group in yaml.safe_load((PROM / "rules" / "alerts.yml").read_text())["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_issue_alerts_present():
    required = {"ActivityExporterDown", "ActivityDatabaseDown", "ActivityExporterRefreshStale",
                "ActivityShimDroppingEvents", "ActivityFailedLoginBurst", "ActivitySpike", "ActivityDrop",
                "ActivityApiErrorRatioHigh", "ActivityApiLatencyHigh", "ActivityKoboSyncStopped",
                "ActivityConversionFailures"}
    assert required <= _alert_names()


def test_every_alert_has_a_firing_and_a_silent_case():
    """Read the promtool test files: each alert appears with a non-empty and with an empty exp_alerts."""
    fires, silent = set(), set()
    for path in (PROM / "tests").glob("*.yml"):
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    names = _alert_names()
    assert names - fires == set(), f"alerts with no firing case: {names - fires}"
    assert names - silent == set(), f"alerts with no silent case: {names - silent}"


@needs_promtool
def test_every_query_parses(tmp_path):
    """Each dashboard expression (variables substituted) is valid PromQL for the Prometheus we ship against."""
    queries = dashboard_queries() + rule_queries()
    rules = [{"record": f"parse:check_{i}", "expr": q.expr} for i, q in enumerate(queries)]
    f = tmp_path / "parse.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "parse", "rules": rules}]}))
    r = promtool("check", "rules", str(f))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(rules)} rules found" in r.stdout
