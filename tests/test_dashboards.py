"""Structural tests of the bundled Grafana dashboards.

Grafana itself cannot run on the project's machines, so these check what Grafana would otherwise tell us at load
time (ids, layout, datasource and variable references) plus the project's own rules: in sync with the generator,
every panel described and with a unit, every seed-000 panel mapped, every metric in the catalogue.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e_queries import dashboard_queries, metric_names, rule_queries  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = ROOT / "grafana" / "generate.py"
DATASOURCE_FILE = ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
PROVIDER_FILE = ROOT / "grafana" / "provisioning" / "dashboards" / "activity-exporter.yaml"
METRICS_MD = ROOT.parent / "shared" / "METRICS.md"
DOCS = ROOT / "docs" / "dashboards.md"

UIDS = {"activity": "activity-exporter-activity", "library": "activity-exporter-library",
        "api": "activity-exporter-api"}
#: Variables Grafana defines itself.
BUILTIN_VARS = {"__range", "__range_s", "__range_ms", "__rate_interval", "__interval", "__interval_ms",
                "__all", "__auto", "__name", "__dashboard", "__from", "__to", "__user", "__org", "timeFilter"}
#: Metrics the dashboards may use beyond METRICS.md (agreed with the exporter engineers), and Prometheus' own.
#: The project's own metric documentation: every metric a dashboard or rule uses must be described here.
METRIC_DOCS = [ROOT / "docs" / "metrics.md", ROOT / "docs" / "metrics-library-api.md"]
#: The panels of seed 000's three tabs; each must have a row in docs/dashboards.md.
SEED_PANELS = [
    "Total Events", "Active Users", "Total Logins", "Downloads", "Books Read", "Searches", "Activity Over Time",
    "Activity Heatmap", "Download Format Distribution", "Top Users", "Most Active Days", "Top Books",
    "Recent Searches", "Reading Trends", "Format Preferences by User", "Discovery Sources", "Device Breakdown",
    "Avg Session Duration", "Search Success Rate", "Shelf Activity",
    "Total Books", "Books Added", "Conversions", "Format Count", "Library Growth", "Format Distribution",
    "Series Completion", "Publication Years", "Average Rating", "Unrated Percentage", "Rating Distribution",
    "Top Enforced Books", "Import Pipeline",
    "API Usage Breakdown", "Endpoint Frequency", "API Heatmap",
]


def load(name: str) -> dict:
    return json.loads((ROOT / "grafana" / "dashboards" / f"{name}.json").read_text())


def all_panels(dash: dict) -> list[dict]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def provisioned_uid() -> str:
    return yaml.safe_load(DATASOURCE_FILE.read_text())["datasources"][0]["uid"]


@pytest.fixture(scope="module", params=list(UIDS))
def dash(request):
    return request.param, load(request.param)


# ------------------------------------------------------------------------------------------ generator sync


def test_committed_json_matches_generator():
    """The JSON Grafana loads is exactly what grafana/generate.py produces (no hand edits, no stale output)."""
    r = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_check_mode_detects_drift(tmp_path):
    """--check must fail on a differing file, or the sync test above proves nothing."""
    subprocess.run([sys.executable, str(GENERATOR), "--out", str(tmp_path)], check=True, capture_output=True)
    assert subprocess.run([sys.executable, str(GENERATOR), "--check", "--out", str(tmp_path)]).returncode == 0
    f = tmp_path / "library.json"
    f.write_text(f.read_text().replace('"Total books"', '"Total bookz"'))
    r = subprocess.run([sys.executable, str(GENERATOR), "--check", "--out", str(tmp_path)], capture_output=True,
                       text=True)
    assert r.returncode == 1 and "library.json" in r.stderr


# ------------------------------------------------------------------------------------------ dashboard model


def test_uid_schema_and_links(dash):
    """Stable uids, Grafana 11 schema, and links to the two other dashboards by uid."""
    name, d = dash
    assert d["uid"] == UIDS[name]
    assert d["schemaVersion"] >= 39
    assert "activity-exporter" in d["tags"]
    linked = {link["url"].rsplit("/", 1)[-1] for link in d["links"] if link["type"] == "link"}
    assert linked == set(UIDS.values()) - {UIDS[name]}
    assert all(link.get("keepTime") for link in d["links"])


def test_panel_ids_unique(dash):
    _, d = dash
    ids = [p["id"] for p in all_panels(d)]
    assert len(ids) == len(set(ids)), ids


def test_grid_positions_in_bounds_and_not_overlapping(dash):
    _, d = dash
    boxes = []
    for p in all_panels(d):
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0, p["title"]
        assert g["x"] + g["w"] <= 24, f"{p['title']} sticks out of the 24-column grid"
        boxes.append((p["title"], g))
    for i, (ta, a) in enumerate(boxes):
        for tb, b in boxes[i + 1:]:
            overlap = (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
                       and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])
            assert not overlap, f"'{ta}' overlaps '{tb}'"


def _datasource_refs(node, path="$"):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "datasource":
                yield path, v
            yield from _datasource_refs(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _datasource_refs(v, f"{path}[{i}]")


def test_datasource_references_resolve_to_provisioned_uid(dash):
    """Every reference is the ${datasource} variable (whose default is the provisioned uid) or that uid."""
    _, d = dash
    uid = provisioned_uid()
    ds_var = next(v for v in d["templating"]["list"] if v["name"] == "datasource")
    assert ds_var["type"] == "datasource" and ds_var["query"] == "prometheus"
    assert ds_var["current"]["value"] == uid
    refs = list(_datasource_refs(d))
    assert refs
    for path, ref in refs:
        if path.startswith("$.annotations"):
            assert ref["uid"] == "-- Grafana --"
            continue
        assert ref["type"] == "prometheus", path
        assert ref["uid"] in ("${datasource}", uid), f"{path}: {ref}"


def _strings(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


def test_every_variable_used_is_defined(dash):
    _, d = dash
    defined = {v["name"] for v in d["templating"]["list"]}
    used = set()
    for s in _strings({"panels": d["panels"], "links": d["links"], "templating": d["templating"]}):
        for m in re.finditer(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", s):
            name = m.group(1) or m.group(2) or m.group(3)
            if not name.isdigit():
                used.add(name)
    undefined = used - defined - BUILTIN_VARS
    assert not undefined, f"undefined variables: {undefined}"
    assert {"datasource", "job", "instance"} <= defined


def test_variables():
    """job/instance everywhere; user (multi, All = .*) and window on the activity dashboard."""
    for name in UIDS:
        vs = {v["name"]: v for v in load(name)["templating"]["list"]}
        assert vs["instance"]["includeAll"] and vs["instance"]["allValue"] == ".*"
        assert "label_values(activity_exporter_build_info" in vs["job"]["definition"]
    vs = {v["name"]: v for v in load("activity")["templating"]["list"]}
    assert vs["user"]["multi"] and vs["user"]["includeAll"] and vs["user"]["allValue"] == ".*"
    assert "activity_events_total" in vs["user"]["definition"]
    assert [o["value"] for o in vs["window"]["options"]] == ["1d", "7d", "30d", "90d", "365d"]


def test_every_panel_has_description_unit_and_queries(dash):
    _, d = dash
    for p in all_panels(d):
        if p["type"] == "row":
            continue
        assert len(p.get("description", "")) >= 30, f"{p['title']}: description missing or too short"
        assert p["fieldConfig"]["defaults"].get("unit"), f"{p['title']}: no unit"
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        assert all(t["expr"].strip() for t in p["targets"]), p["title"]


def test_panel_types_cover_the_seed_visualisations():
    types = {p["type"] for name in UIDS for p in all_panels(load(name))}
    assert {"stat", "timeseries", "heatmap", "piechart", "bargauge", "table", "gauge", "barchart"} <= types


def test_heatmaps_use_hour_and_weekday_counters():
    """The seed's hour x weekday heatmaps read the *_by_hour_total counters, grouped by weekday and hour."""
    for name, counter in (("activity", "activity_events_by_hour_total"), ("api", "activity_api_requests_by_hour_total")):
        panels = all_panels(load(name))
        heat = [p for p in panels if p["type"] == "heatmap"]
        assert heat and counter in heat[0]["targets"][0]["expr"]
        grid = [p for p in panels if "weekday × hour" in p["title"]]
        assert grid and "sum by (weekday, hour)" in grid[0]["targets"][0]["expr"]
        assert counter in grid[0]["targets"][0]["expr"]


def test_user_filter_reaches_user_labelled_panels():
    """Panels on metrics that carry a user label honour the $user variable (the seed's per-user filter)."""
    checked = 0
    for p in all_panels(load("activity")):
        if p["title"] == "Search success rate":  # successes carry no user label; the ratio stays global
            continue
        for t in p.get("targets", []):
            if re.search(r"activity_(events|format_events)_total\{", t["expr"]):
                assert 'user=~"$user"' in t["expr"], p["title"]
                checked += 1
    assert checked >= 8


# ------------------------------------------------------------------------------------------ metric contract


def table_metric_names(path) -> set[str]:
    """Metric names in the first column of a markdown file's tables."""
    names = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\|\s*`([a-zA-Z_:][a-zA-Z0-9_:]*)`", line)
        if m:
            names.add(m.group(1))
    return names


def documented() -> set[str]:
    return set().union(*(table_metric_names(p) for p in METRIC_DOCS))


def catalogue() -> set[str]:
    """Metric names of the shared contract (../shared/METRICS.md), present where the team's material is."""
    if not METRICS_MD.exists():
        pytest.skip(f"{METRICS_MD} not here (it comes with the team's shared material)")
    return table_metric_names(METRICS_MD)


def test_catalogue_is_readable():
    assert {"activity_events_total", "calibre_books", "activity_exporter_build_info"} <= catalogue()


def test_contract_metrics_are_documented():
    missing = catalogue() - documented()
    assert not missing, f"METRICS.md names missing from {[str(p) for p in METRIC_DOCS]}: {sorted(missing)}"


def test_every_metric_queried_is_documented():
    allowed = documented() | {"up"}
    recorded = {q.source.split("record ", 1)[1] for q in rule_queries() if q.kind == "record"}
    unknown = {}
    for q in dashboard_queries() + rule_queries():
        for name in metric_names(q.expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if name in allowed or base in allowed or name in recorded:
                continue
            unknown.setdefault(name, q.source)
    assert not unknown, f"metrics not documented in docs/: {unknown}"


def test_metric_name_extraction_sees_through_promql():
    """The check above is only as good as this parser."""
    expr = ('histogram_quantile(0.95, sum by (le, category) (rate(activity_api_request_duration_seconds_bucket'
            '{job=~"$job", category="Kobo Sync"}[5m]))) / on (job) group_left up offset 1w'
            ' and label_replace(calibre_books, "x", "$1", "y", "(.*)")')
    assert metric_names(expr) == {"activity_api_request_duration_seconds_bucket", "up", "calibre_books"}


# ------------------------------------------------------------------------------------------ provisioning, docs


def test_provisioning_points_at_the_dashboards():
    prov = yaml.safe_load(PROVIDER_FILE.read_text())["providers"][0]
    assert prov["type"] == "file" and prov["folder"]
    ds = yaml.safe_load(DATASOURCE_FILE.read_text())["datasources"][0]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{prov['options']['path']}:ro" in mounts
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in mounts


def _docs_mapping() -> list[tuple[str, str, str]]:
    rows = []
    for line in DOCS.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[1] in ("User Activity", "Library Statistics", "API Usage"):
            rows.append((cells[0], cells[1], cells[2]))
    return rows


def test_docs_map_every_seed_panel_to_an_existing_panel():
    """docs/dashboards.md's table names, for each seed-000 panel, a panel title that exists in that dashboard."""
    by_tab = {"User Activity": "activity", "Library Statistics": "library", "API Usage": "api"}
    rows = _docs_mapping()
    seeds = {r[0] for r in rows}
    missing = [s for s in SEED_PANELS if s not in seeds]
    assert not missing, f"seed panels without a row in docs/dashboards.md: {missing}"
    for seed, tab, titles in rows:
        have = {p["title"] for p in all_panels(load(by_tab[tab]))}
        for title in re.findall(r"`([^`]+)`", titles):
            assert title in have, f"docs map '{seed}' to '{title}', not a panel of {tab}"
