"""End to end: a real Prometheus scrapes the real exporter serving demo data; every query we ship returns data.

Starts ``python -m exporter serve --demo`` on a free port and Debian's ``/usr/bin/prometheus`` with the repo's
rule files and a 1s scrape/evaluation interval, waits for several scrapes, then runs every dashboard expression
(variables substituted) and every recording rule through the HTTP API and asserts each returns samples. Alert
expressions are silent on healthy demo data by design, so for them the test asserts they evaluate and that
every metric they read is exposed by the exporter; Prometheus must also report every rule healthy.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e_queries import RULE_FILES, all_queries, metric_names  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
JOB = "activity-exporter"

pytestmark = pytest.mark.slow


def _exporter_serve_available() -> str | None:
    """None when `python -m exporter serve --demo` exists, else why not."""
    r = subprocess.run([sys.executable, "-m", "exporter", "serve", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    if r.returncode != 0:
        return f"`python -m exporter serve` is not available yet: {r.stderr.strip()[-300:]}"
    if "--demo" not in r.stdout:
        return "`python -m exporter serve` has no --demo flag yet"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def _wait(what: str, check, timeout: float, procs=()) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{p.args[0]} exited with {p.returncode} while waiting for {what}")
        try:
            if check():
                return
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what} (last error: {last})")


class Prom:
    def __init__(self, base: str):
        self.base = base

    def query(self, expr: str) -> dict:
        data = urllib.parse.urlencode({"query": expr}).encode()
        req = urllib.request.Request(f"{self.base}/api/v1/query", data=data)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:  # 400/422 carry the PromQL error as JSON
            return json.loads(exc.read())

    def value(self, expr: str) -> float | None:
        res = self.query(expr)["data"]["result"]
        return float(res[0]["value"][1]) if res else None


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if PROMETHEUS is None:
        pytest.skip("prometheus not found: install Debian's 'prometheus' package (apt-get install prometheus)")
    why = _exporter_serve_available()
    if why:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("e2e")
    exp_port, prom_port = _free_port(), _free_port()
    exp_log = open(tmp / "exporter.log", "w")
    exporter = subprocess.Popen(
        [sys.executable, "-m", "exporter", "serve", "--demo", "--demo-dir", str(tmp / "demo"),
         "--listen", f"127.0.0.1:{exp_port}", "--state", str(tmp / "state.json"), "--refresh-interval", "1"],
        cwd=ROOT, stdout=exp_log, stderr=subprocess.STDOUT)
    procs = [exporter]
    prometheus = None
    try:
        metrics_url = f"http://127.0.0.1:{exp_port}/metrics"
        _wait("the exporter's /metrics", lambda: b"activity_events_total" in _get(metrics_url), 180, procs)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in RULE_FILES],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{exp_port}"]}]}],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        prom_log = open(tmp / "prometheus.log", "w")
        prometheus = subprocess.Popen(
            [PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=prom_log, stderr=subprocess.STDOUT)
        procs.append(prometheus)
        prom = Prom(f"http://127.0.0.1:{prom_port}")
        _wait("Prometheus ready", lambda: _get(f"{prom.base}/-/ready"), 60, procs)
        # Enough scrapes for rate()/increase() and at least a few rule evaluations.
        _wait("8 successful scrapes",
              lambda: (prom.value(f'sum_over_time(up{{job="{JOB}"}}[5m])') or 0) >= 8, 120, procs)
        _wait("recording rules evaluated", lambda: prom.value("count(instance:activity_events:increase1h)"), 60,
              procs)
        yield prom, _get(metrics_url).decode(), tmp
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def test_every_dashboard_and_recording_query_returns_data(stack):
    prom, _, tmp = stack
    failures = []
    queries = [q for q in all_queries(JOB) if q.kind != "alert"]
    assert len(queries) > 50
    for q in queries:
        res = prom.query(q.expr)
        if res.get("status") != "success":
            failures.append(f"{q.source}: error {res.get('error')}\n    {q.expr}")
        elif not res["data"]["result"]:
            failures.append(f"{q.source}: no data\n    {q.expr}")
    assert not failures, f"{len(failures)}/{len(queries)} queries failed:\n" + "\n".join(failures)


def test_alert_expressions_evaluate_on_exposed_metrics(stack):
    prom, metrics_text, _ = stack
    exposed = set(re.findall(r"^# TYPE (\S+) ", metrics_text, flags=re.M)) | {"up"}
    failures = []
    for q in all_queries(JOB):
        if q.kind != "alert":
            continue
        res = prom.query(q.expr)
        if res.get("status") != "success":
            failures.append(f"{q.source}: error {res.get('error')}")
        for name in metric_names(q.expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if name not in exposed and base not in exposed:
                failures.append(f"{q.source}: the exporter does not expose {name}")
    assert not failures, "\n".join(failures)


def test_prometheus_loaded_every_rule_and_all_are_healthy(stack):
    prom, _, _ = stack
    groups = json.loads(_get(f"{prom.base}/api/v1/rules"))["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    expected = sum(len(g["rules"]) for p in RULE_FILES for g in yaml.safe_load(p.read_text())["groups"])
    assert len(rules) == expected
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad


def test_no_critical_alert_on_a_healthy_demo(stack):
    prom, _, _ = stack
    firing = prom.query('ALERTS{severity="critical"}')["data"]["result"]
    assert firing == [], firing
