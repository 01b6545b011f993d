#!/usr/bin/env python3
"""Generate the bundled Grafana dashboards (grafana/dashboards/{activity,library,api}.json).

The JSON files are build output kept in git so Grafana can provision them; this script is their source. Run
``python grafana/generate.py`` after editing, ``python grafana/generate.py --check`` (CI) exits 1 when the
committed JSON differs from what this script generates.

Only the standard library and PyYAML: the datasource uid is read from the provisioning file so the two
can never disagree.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "dashboards"
DATASOURCE_FILE = HERE / "provisioning" / "datasources" / "prometheus.yaml"

SCHEMA_VERSION = 39
TAG = "activity-exporter"
UIDS = {
    "activity": "activity-exporter-activity",
    "library": "activity-exporter-library",
    "api": "activity-exporter-api",
}
TITLES = {
    "activity": "Activity Exporter / User Activity",
    "library": "Activity Exporter / Library Statistics",
    "api": "Activity Exporter / API Usage & Exporter Health",
}
WINDOWS = ["1d", "7d", "30d", "90d", "365d"]
WEEKDAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]


def provisioned_datasource_uid() -> str:
    """The uid of the provisioned Prometheus datasource (single source of truth)."""
    doc = yaml.safe_load(DATASOURCE_FILE.read_text())
    for ds in doc["datasources"]:
        if ds["type"] == "prometheus":
            return ds["uid"]
    raise SystemExit(f"no prometheus datasource in {DATASOURCE_FILE}")


DS = {"type": "prometheus", "uid": "${datasource}"}
# Every selector is scoped to the chosen job/instance.
S = 'job=~"$job", instance=~"$instance"'


def sel(**matchers: str) -> str:
    """A label matcher list: job/instance scope plus ``label=value`` matchers (a leading ``~`` means ``=~``)."""
    parts = [S]
    for label, value in matchers.items():
        op, value = ("=~", value[1:]) if value.startswith("~") else ("=", value)
        parts.append(f'{label}{op}"{value}"')
    return "{" + ", ".join(parts) + "}"


# --------------------------------------------------------------------------------------------- panel helpers


def target(expr, legend="", ref="A", instant=False, fmt="time_series", interval=None):
    t = {
        "datasource": DS,
        "editorMode": "code",
        "expr": expr,
        "format": fmt,
        "instant": instant,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "refId": ref,
    }
    if interval:
        t["interval"] = interval
    return t


def _reduce(calc="lastNotNull"):
    return {"calcs": [calc], "fields": "", "values": False}


def _defaults(unit, decimals=None, min_=None, max_=None, thresholds=None, mappings=None, custom=None, color=None):
    d = {
        "color": color or {"mode": "thresholds"},
        "mappings": mappings or [],
        "thresholds": {
            "mode": "absolute",
            "steps": thresholds or [{"color": "green", "value": None}],
        },
        "unit": unit,
    }
    if decimals is not None:
        d["decimals"] = decimals
    if min_ is not None:
        d["min"] = min_
    if max_ is not None:
        d["max"] = max_
    if custom is not None:
        d["custom"] = custom
    return d


def panel(kind, title, description, targets, unit, w, h, options=None, defaults_extra=None, overrides=None,
          transformations=None, interval=None, **defaults_kw):
    p = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"h": h, "w": w, "x": 0, "y": 0},
        "fieldConfig": {"defaults": _defaults(unit, **defaults_kw), "overrides": overrides or []},
        "options": options or {},
        "targets": targets,
    }
    if defaults_extra:
        p["fieldConfig"]["defaults"].update(defaults_extra)
    if transformations:
        p["transformations"] = transformations
    if interval:
        p["interval"] = interval
    return p


def stat(title, description, expr, unit="short", w=4, h=4, decimals=None, thresholds=None, legend=""):
    return panel(
        "stat", title, description, [target(expr, legend, instant=True)], unit, w, h,
        options={
            "reduceOptions": _reduce(), "colorMode": "value", "graphMode": "none", "justifyMode": "auto",
            "orientation": "auto", "textMode": "auto", "wideLayout": True, "showPercentChange": False,
        },
        decimals=decimals, thresholds=thresholds,
    )


def gauge(title, description, expr, unit, min_, max_, thresholds, w=6, h=7, decimals=None):
    return panel(
        "gauge", title, description, [target(expr, instant=True)], unit, w, h,
        options={"reduceOptions": _reduce(), "orientation": "auto", "showThresholdLabels": False,
                 "showThresholdMarkers": True, "minVizHeight": 75, "minVizWidth": 75, "sizing": "auto"},
        min_=min_, max_=max_, thresholds=thresholds, decimals=decimals,
    )


def timeseries(title, description, targets, unit, w=12, h=8, draw="line", stack=False, fill=10,
               interval=None, overrides=None):
    custom = {
        "drawStyle": draw,
        "fillOpacity": 80 if draw == "bars" else fill,
        "lineWidth": 1,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"group": "A", "mode": "normal" if stack else "none"},
        "axisPlacement": "auto",
        "barAlignment": 0,
    }
    return panel(
        "timeseries", title, description, targets, unit, w, h,
        options={"legend": {"calcs": [], "displayMode": "list", "placement": "bottom", "showLegend": True},
                 "tooltip": {"mode": "multi", "sort": "desc"}},
        custom=custom, color={"mode": "palette-classic"}, interval=interval, overrides=overrides,
    )


def pie(title, description, expr, legend, unit="short", w=8, h=8):
    return panel(
        "piechart", title, description, [target(expr, legend, instant=True)], unit, w, h,
        options={
            "reduceOptions": _reduce(), "pieType": "donut", "displayLabels": ["percent"],
            "legend": {"displayMode": "table", "placement": "right", "showLegend": True,
                       "values": ["value", "percent"]},
            "tooltip": {"mode": "single", "sort": "none"},
        },
        color={"mode": "palette-classic"},
    )


def bargauge(title, description, expr, legend, unit="short", w=8, h=8, instant=True):
    return panel(
        "bargauge", title, description, [target(expr, legend, instant=instant)], unit, w, h,
        options={"reduceOptions": _reduce(), "orientation": "horizontal", "displayMode": "gradient",
                 "valueMode": "color", "namePlacement": "auto", "showUnfilled": True, "sizing": "auto",
                 "minVizHeight": 16, "minVizWidth": 8, "maxVizHeight": 300},
        color={"mode": "continuous-BlPu"},
    )


def table(title, description, targets, unit="short", w=12, h=8, transformations=None, overrides=None,
          sort=None, interval=None):
    options = {"cellHeight": "sm", "showHeader": True,
               "footer": {"show": False, "countRows": False, "fields": "", "reducer": ["sum"]}}
    if sort:
        options["sortBy"] = [{"desc": True, "displayName": sort}]
    return panel(
        "table", title, description, targets, unit, w, h, options=options, transformations=transformations,
        overrides=overrides, interval=interval,
        custom={"align": "auto", "cellOptions": {"type": "auto"}, "inspect": False, "filterable": False},
    )


def barchart(title, description, targets, x_field, unit="short", w=12, h=8, stack=False, transformations=None,
             horizontal=False):
    return panel(
        "barchart", title, description, targets, unit, w, h,
        options={
            "orientation": "horizontal" if horizontal else "auto", "xField": x_field,
            "stacking": "normal" if stack else "none", "showValue": "never", "groupWidth": 0.7,
            "barWidth": 0.9, "barRadius": 0, "fullHighlight": False, "xTickLabelRotation": 0,
            "xTickLabelSpacing": 0,
            "legend": {"calcs": [], "displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        transformations=transformations, color={"mode": "palette-classic"},
        custom={"fillOpacity": 80, "lineWidth": 1, "gradientMode": "none", "axisPlacement": "auto"},
    )


def row(title):
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"h": 1, "w": 24, "x": 0, "y": 0}}


# transformations
def organize(exclude=(), rename=None, index=None, keep_time=False):
    ex = {k: True for k in ("job", "instance", "__name__", *exclude)}
    if not keep_time:
        ex["Time"] = True
    return {"id": "organize", "options": {"excludeByName": ex, "renameByName": rename or {}, "indexByName": index or {}}}


def sort_by(field, desc=True):
    return {"id": "sortBy", "options": {"fields": {}, "sort": [{"field": field, "desc": desc}]}}


def limit(n):
    return {"id": "limit", "options": {"limitField": n}}


MERGE = {"id": "merge", "options": {}}


def matrix(row_field, col_field, value_field="Value"):
    return {"id": "groupingToMatrix", "options": {"rowField": row_field, "columnField": col_field,
                                                  "valueField": value_field, "emptyValue": "zero"}}


def override(field, props):
    return {"matcher": {"id": "byName", "options": field},
            "properties": [{"id": k, "value": v} for k, v in props.items()]}


def color_cells(field, mode="gradient"):
    return override(field, {"custom.cellOptions": {"type": "color-background", "mode": mode}})


def hour_padded(expr):
    """Zero-pad the ``hour`` label (``7`` -> ``07``) so Grafana orders heatmap rows and matrix columns 00..23."""
    return f'label_replace({expr}, "hour", "0$1", "hour", "(\\\\d)")'


def weekday_hour_matrix(title, description, counter, unit="short"):
    """Weekday × hour grid (the seed's heatmap over the whole range): a table whose cells are coloured by value."""
    expr = hour_padded(f"sum by (weekday, hour) (increase({counter}{sel()}[$__range]))")
    corner = "weekday\\hour"
    index = {corner: 0, **{f"{h:02d}": h + 1 for h in range(24)}}
    mappings = [{"type": "value", "options": {str(i): {"text": d, "index": i} for i, d in enumerate(WEEKDAYS)}}]
    overrides = [override(corner, {"displayName": "Day", "mappings": mappings, "custom.width": 60})]
    overrides += [color_cells(f"{h:02d}") for h in range(24)]
    t = table(title, description, [target(expr, instant=True, fmt="table")], unit, w=24, h=8,
              transformations=[matrix("weekday", "hour"), organize(index=index), sort_by(corner, desc=False)],
              overrides=overrides)
    t["fieldConfig"]["defaults"]["color"] = {"mode": "continuous-YlRd"}
    t["fieldConfig"]["defaults"]["custom"]["width"] = 40
    return t


def hour_heatmap(title, description, counter, unit="short"):
    """Hour-of-day (y) × day (x) heatmap: one cell per hour slot per day, so a 7-day range shows each weekday."""
    expr = hour_padded(f"sum by (hour) (increase({counter}{sel()}[$__interval]))")
    return panel(
        "heatmap", title, description, [target(expr, "{{hour}}", fmt="time_series")], unit, 24, 9,
        options={
            "calculate": False,
            "cellGap": 1,
            "cellValues": {"unit": unit},
            "color": {"mode": "scheme", "scheme": "Oranges", "fill": "dark-orange", "scale": "exponential",
                      "exponent": 0.5, "steps": 64, "reverse": False},
            "exemplars": {"color": "rgba(255,0,255,0.7)"},
            "filterValues": {"le": 1e-09},
            "legend": {"show": True},
            "rowsFrame": {"layout": "auto", "value": "Events"},
            "tooltip": {"mode": "single", "yHistogram": False, "showColorScale": True},
            "yAxis": {"axisPlacement": "left", "reverse": True, "unit": "none", "axisLabel": "hour of day"},
        },
        interval="1d",
        custom={"hideFrom": {"legend": False, "tooltip": False, "viz": False},
                "scaleDistribution": {"type": "linear"}},
    )


# ------------------------------------------------------------------------------------------------ variables


def var_datasource(uid):
    return {
        "name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
        "current": {"selected": False, "text": "Prometheus (activity-exporter)", "value": uid},
        "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1, "regex": "",
        "skipUrlSync": False,
    }


def var_query(name, label, query, multi=False, include_all=False, all_value=None, sort=1):
    v = {
        "name": name, "label": label, "type": "query", "datasource": DS,
        "definition": query,
        "query": {"qryType": 1, "query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]} if include_all else {},
        "hide": 0, "includeAll": include_all, "multi": multi, "options": [], "refresh": 2, "regex": "",
        "skipUrlSync": False, "sort": sort,
    }
    if all_value is not None:
        v["allValue"] = all_value
    return v


def var_window(default="30d"):
    return {
        "name": "window", "label": "Window (distinct-count gauges)", "type": "custom",
        "query": ",".join(WINDOWS),
        "current": {"selected": True, "text": default, "value": default},
        "options": [{"selected": w == default, "text": w, "value": w} for w in WINDOWS],
        "hide": 0, "includeAll": False, "multi": False, "skipUrlSync": False,
        "description": "Window of the exporter's distinct-count gauges (active users, books read, top books, "
                       "session duration). Counters follow the time picker instead.",
    }


def base_variables(uid, user=False, window=False):
    vs = [
        var_datasource(uid),
        var_query("job", "Job", "label_values(activity_exporter_build_info, job)"),
        var_query("instance", "Instance", 'label_values(activity_exporter_build_info{job=~"$job"}, instance)',
                  multi=True, include_all=True, all_value=".*"),
    ]
    if user:
        vs.append(var_query("user", "User", 'label_values(activity_events_total{job=~"$job", instance=~"$instance"}, user)',
                            multi=True, include_all=True, all_value=".*"))
    if window:
        vs.append(var_window())
    return vs


# ------------------------------------------------------------------------------------------------ dashboards


def activity_panels():
    ev = "activity_events_total"
    p = []
    p.append(row("Overview"))
    p += [
        stat("Total events", "All tracked user actions (logins, downloads, reads, searches, e-mails, shelf and API "
             "events) in the selected time range, for the selected users. Seed: Total Events.",
             f"sum(increase({ev}{sel(user='~$user')}[$__range]))"),
        stat("Active users ($window)", "Distinct users with at least one event in the last $window (exporter "
             "gauge; not affected by the user filter). Seed: Active Users.",
             f"max(activity_active_users{sel(window='$window')})"),
        stat("Total logins", "Successful logins in the selected range for the selected users; the seed shows this "
             "card instead of Active Users when one user is selected. Seed: Total Logins.",
             f"sum(increase({ev}{sel(user='~$user', event_type='LOGIN')}[$__range]))"),
        stat("Downloads", "Downloads plus send-to-device e-mails (event types DOWNLOAD and EMAIL) in the selected "
             "range. Seed: Downloads.",
             f"sum(increase({ev}{sel(user='~$user', event_type='~DOWNLOAD|EMAIL')}[$__range]))"),
        stat("Books read ($window)", "Distinct books opened in the reader in the last $window (exporter gauge, all "
             "users). Seed: Books Read.",
             f"max(activity_books_read{sel(window='$window')})"),
        stat("Searches", "Catalog searches (event type SEARCH) in the selected range. Seed: Searches.",
             f"sum(increase({ev}{sel(user='~$user', event_type='SEARCH')}[$__range]))"),
    ]
    p.append(row("Activity over time"))
    p.append(timeseries(
        "Daily activity by event type",
        "Events per day, stacked by event type (LOGIN, DOWNLOAD, READ, SEARCH, EMAIL, SHELF_*, API ...). One bar "
        "per day. Seed: Activity Over Time.",
        [target(f"sum by (event_type) (increase({ev}{sel(user='~$user')}[$__interval]))", "{{event_type}}")],
        "short", w=24, h=9, draw="bars", stack=True, interval="1d"))
    p.append(hour_heatmap(
        "Activity by hour of day",
        "Heatmap of events per hour-of-day slot (rows 00-23, exporter time zone) for each day (columns); over a "
        "7-day range each column is one weekday. All users. Seed: Activity Heatmap.",
        "activity_events_by_hour_total"))
    p.append(weekday_hour_matrix(
        "Activity heatmap: weekday × hour",
        "Events in the selected range by day of week (rows, Sun-Sat) and hour of day (columns 00-23), colour "
        "scaled by count: the seed's heatmap, summed over every week in the range. All users. Seed: Activity "
        "Heatmap.",
        "activity_events_by_hour_total"))
    p.append(row("Content"))
    p.append(pie(
        "Download formats",
        "Share of downloads and send-to-device e-mails by book format (EPUB, MOBI, AZW3, PDF, KEPUB, UNKNOWN) in "
        "the selected range. Seed: Download Format Distribution.",
        f"sum by (format) (increase(activity_format_events_total{sel(user='~$user', event_type='~DOWNLOAD|EMAIL')}[$__range]))",
        "{{format}}"))
    p.append(bargauge(
        "Top 10 users",
        "The ten users with the most events in the selected range (all event types). With a user selected, see "
        "'Most active days' beside it. Seed: Top Users.",
        f"topk(10, sum by (user) (increase({ev}{sel(user='~$user')}[$__range])))", "{{user}}"))
    p.append(table(
        "Most active days ($user)",
        "The ten days with the most events for the selected user(s), busiest first: the seed's per-user view of "
        "Top Users. Seed: Most Active Days.",
        [target(f"sum(increase({ev}{sel(user='~$user')}[1d]))", "events", fmt="table", interval="1d")],
        "short", w=8, h=8, interval="1d",
        transformations=[organize(rename={"Value": "Events", "Time": "Day"}, keep_time=True),
                         sort_by("Events"), limit(10)],
        overrides=[override("Day", {"unit": "time:YYYY-MM-DD ddd"})]))
    p.append(table(
        "Top 10 books ($window)",
        "Books with the most reads + downloads + e-mails in the last $window (exporter leaderboard; all users). "
        "Seed: Top Books.",
        [target(f'topk(10, activity_top_books{sel(window="$window")})', fmt="table", instant=True)],
        w=12, h=9,
        transformations=[organize(exclude=("window",), rename={"title": "Title", "book_id": "Book id",
                                                               "Value": "Reads + downloads"},
                                  index={"title": 0, "book_id": 1, "Value": 2}),
                         sort_by("Reads + downloads")],
        overrides=[override("Reads + downloads", {"custom.cellOptions": {"type": "gauge", "mode": "basic"}})]))
    p.append(table(
        "Last 15 searches",
        "The 15 most recent search queries with user and time (value of the exporter's recent-search gauge). "
        "Admin-only data: switch off with recent_searches_enabled: false. Seed: Recent Searches.",
        [target(f"activity_recent_search_timestamp_seconds{sel(user='~$user')} * 1000", fmt="table", instant=True)],
        "dateTimeAsIso", w=12, h=9,
        transformations=[organize(rename={"query": "Query", "user": "User", "Value": "When"},
                                  index={"Value": 0, "user": 1, "query": 2}),
                         sort_by("When"), limit(15)]))
    p.append(row("Reading"))
    p.append(timeseries(
        "Books read per week",
        "Distinct books read in the trailing 7 days (exporter gauge), with its 4-week moving average to smooth "
        "weekly swings. Seed: Reading Trends.",
        [target(f'max(activity_books_read{sel(window="7d")})', "books read (7d)", "A"),
         target(f'max(avg_over_time(activity_books_read{sel(window="7d")}[4w]))', "4-week moving average",
                "B")],
        "short", w=12, h=8,
        overrides=[override("4-week moving average", {"custom.lineStyle": {"dash": [10, 10], "fill": "dash"},
                                                      "custom.lineWidth": 2})]))
    p.append(barchart(
        "Format preference by user",
        "Downloads, reads and e-mails per user, stacked by book format, in the selected range: which formats each "
        "user prefers. Seed: Format Preferences by User.",
        [target(f"sum by (user, format) (increase(activity_format_events_total{sel(user='~$user', event_type='~DOWNLOAD|READ|EMAIL')}[$__range]))",
                fmt="table", instant=True)],
        "user\\format", stack=True, w=12, h=8,
        transformations=[matrix("user", "format")]))
    p.append(pie(
        "Discovery sources",
        "How users reached the books they read or downloaded (search, book_detail, series, author, category, "
        "shelf, direct) in the selected range. All users. Seed: Discovery Sources.",
        f"sum by (source) (increase(activity_discovery_total{sel()}[$__range]))", "{{source}}"))
    p.append(pie(
        "Devices",
        "Events by device class detected from the User-Agent (desktop, mobile, tablet, unknown) in the selected "
        "range. All users. Seed: Device Breakdown.",
        f"sum by (device_type) (increase(activity_device_events_total{sel()}[$__range]))", "{{device_type}}"))
    p.append(gauge(
        "Average session duration ($window)",
        "Mean session length over the last $window; a session ends after the configured inactivity gap "
        "(session_gap, default 30m). Seed: Avg Session Duration.",
        f'max(activity_average_session_duration_seconds{sel(window="$window")})', "s", 0, 3600,
        [{"color": "red", "value": None}, {"color": "yellow", "value": 60}, {"color": "green", "value": 300}],
        w=4, h=8))
    p.append(gauge(
        "Search success rate",
        "Share of searches in the selected range followed by a read, download or e-mail by the same user within "
        "search_success_window (default 10m). Low values point at catalog gaps. Seed: Search Success Rate.",
        f"sum(increase(activity_search_successes_total{sel()}[$__range])) / "
        f"clamp_min(sum(increase({ev}{sel(event_type='SEARCH')}[$__range])), 1)",
        "percentunit", 0, 1,
        [{"color": "red", "value": None}, {"color": "yellow", "value": 0.4}, {"color": "green", "value": 0.7}],
        w=4, h=8))
    p.append(timeseries(
        "Session length percentiles",
        "Median and 90th percentile of session length from the exporter's session histogram (sessions ending in "
        "each interval). Complements the average gauge.",
        [target(f"histogram_quantile(0.5, sum by (le) (rate(activity_session_duration_seconds_bucket{sel()}[$__rate_interval])))", "p50", "A"),
         target(f"histogram_quantile(0.9, sum by (le) (rate(activity_session_duration_seconds_bucket{sel()}[$__rate_interval])))", "p90", "B")],
        "s", w=8, h=8))
    shelf = "activity_shelf_changes_total"
    adds = f'sum by (shelf) (increase({shelf}{sel(action="add")}[$__range]))'
    rems = f'sum by (shelf) (increase({shelf}{sel(action="remove")}[$__range]))'
    top = f"topk(10, sum by (shelf) (increase({shelf}{sel()}[$__range])))"
    p.append(table(
        "Shelf activity (top 10 shelves)",
        "Books added to and removed from each of the ten most active shelves in the selected range, with the net "
        "change (green = growing, red = shrinking). Seed: Shelf Activity.",
        [target(f"({adds} or {rems} * 0) and on (shelf) {top}", fmt="table", instant=True, ref="A"),
         target(f"({rems} or {adds} * 0) and on (shelf) {top}", fmt="table", instant=True, ref="B"),
         target(f"(({adds} or {rems} * 0) - ({rems} or {adds} * 0)) and on (shelf) {top}", fmt="table",
                instant=True, ref="C")],
        w=12, h=8,
        transformations=[MERGE, organize(rename={"shelf": "Shelf", "Value #A": "Added", "Value #B": "Removed",
                                                 "Value #C": "Net change"},
                                         index={"shelf": 0, "Value #A": 1, "Value #B": 2, "Value #C": 3}),
                         sort_by("Added")],
        overrides=[override("Net change", {
            "custom.cellOptions": {"type": "color-text"},
            "thresholds": {"mode": "absolute", "steps": [{"color": "red", "value": None},
                                                         {"color": "text", "value": 0},
                                                         {"color": "green", "value": 1}]}})]))
    return p


def library_panels():
    p = [row("Library summary")]
    p += [
        stat("Total books", "Books in the Calibre library (metadata.db), as last read by the exporter. Seed: Total "
             "Books.", f"sum(calibre_books{sel()})"),
        stat("Books added", "Books imported in the selected range (cwa_import rows). Seed: Books Added.",
             f"sum(increase(activity_imports_total{sel()}[$__range]))"),
        stat("Conversions", "Format conversions in the selected range (cwa_conversions rows). Seed: Conversions.",
             f"sum(increase(activity_conversions_total{sel()}[$__range]))"),
        stat("Formats", "Distinct book formats present in the library. Seed: Format Count.",
             f"count(max by (format) (calibre_format_books{sel()}) > 0)"),
        stat("Average rating", "Mean rating of rated books, in stars (Calibre's 0-10 scale halved). Seed: Rating "
             "Statistics / Average Rating.", f"max(calibre_average_rating_stars{sel()})", unit="none", decimals=2),
        stat("Unrated books", "Share of books without a rating. Seed: Rating Statistics / Unrated Percentage.",
             f"sum(calibre_unrated_books{sel()}) / clamp_min(sum(calibre_books{sel()}), 1)", unit="percentunit",
             decimals=1),
    ]
    p.append(row("Growth and composition"))
    p.append(timeseries(
        "Library growth",
        "Total books over time (the library size at each scrape). Seed: Library Growth (cumulative books).",
        [target(f"sum(calibre_books{sel()})", "books")], "short", w=12, h=8, fill=40))
    p.append(timeseries(
        "Books added per day",
        "Books imported per day, by import format. Seed: Library Growth (books_added per day).",
        [target(f"sum by (format) (increase(activity_imports_total{sel()}[$__interval]))", "{{format}}")],
        "short", w=12, h=8, draw="bars", stack=True, interval="1d"))
    p.append(bargauge(
        "Books per format",
        "Books that have each format in the library (a book with EPUB and PDF counts in both). Seed: Format "
        "Distribution.", f"sort_desc(sum by (format) (calibre_format_books{sel()}))", "{{format}}", w=8))
    p.append(bargauge(
        "Storage per format",
        "Disk space used by each format's files in the library.",
        f"sort_desc(sum by (format) (calibre_format_size_bytes{sel()}))", "{{format}}", unit="bytes", w=8))
    p.append(barchart(
        "Rating distribution",
        "Books per star rating (1-5; Calibre's 0-10 ratings halved). Seed: Rating Statistics / Distribution.",
        [target(f"sum by (stars) (calibre_books_by_rating{sel()})", fmt="table", instant=True)],
        "stars", w=8, h=8,
        transformations=[organize(rename={"Value": "Books"}), sort_by("stars", desc=False)]))
    p.append(barchart(
        "Books by publication year",
        "Books per publication year from metadata.db pubdate, 1900 to today (undefined dates excluded). Seed: "
        "Publication Years.",
        [target(f'sum by (year) (calibre_books_by_pubyear{sel(year="~19..|20..")})', fmt="table",
                instant=True)],
        "year", w=24, h=8,
        transformations=[organize(rename={"Value": "Books"}), sort_by("year", desc=False)]))
    p.append(row("Series, enforcement and imports"))
    owned = f"sum by (series) (calibre_series_books{sel()})"
    highest = f"max by (series) (calibre_series_max_index{sel()})"
    p.append(table(
        "Series completion",
        "Each series with books owned, highest series index and how many indexes below it are missing "
        "(ceil(highest) - owned): incomplete series to acquire first. Seed: Series Completion.",
        [target(owned, fmt="table", instant=True, ref="A"),
         target(highest, fmt="table", instant=True, ref="B"),
         target(f"clamp_min(ceil({highest}) - {owned}, 0)", fmt="table", instant=True, ref="C")],
        w=12, h=10,
        transformations=[MERGE, organize(rename={"series": "Series", "Value #A": "Owned",
                                                 "Value #B": "Highest index", "Value #C": "Missing"},
                                         index={"series": 0, "Value #A": 1, "Value #B": 2, "Value #C": 3}),
                         sort_by("Missing")],
        overrides=[override("Missing", {"custom.cellOptions": {"type": "color-text"},
                                        "thresholds": {"mode": "absolute", "steps": [
                                            {"color": "green", "value": None}, {"color": "orange", "value": 1}]}}),
                   override("Highest index", {"decimals": 1})]))
    p.append(table(
        "Top enforced books",
        "The ten books with the most metadata enforcement operations (EPUB edit, merge, convert). Seed: Top "
        "Enforced Books.",
        [target(f"topk(10, activity_top_enforced_books{sel()})", fmt="table", instant=True)],
        w=12, h=10,
        transformations=[organize(rename={"title": "Title", "book_id": "Book id", "Value": "Enforcements"},
                                  index={"title": 0, "book_id": 1, "Value": 2}),
                         sort_by("Enforcements")]))
    p.append(table(
        "Import pipeline flows",
        "Books imported in the selected range per flow source → method → final format (a Sankey diagram in the "
        "seed; Grafana's core has none, so each flow is a row with its volume). Seed: Import Pipeline.",
        [target(f"sum by (source, method, format) (increase(activity_imports_total{sel()}[$__range]))",
                fmt="table", instant=True)],
        w=12, h=9,
        transformations=[organize(rename={"source": "Source", "method": "Method", "format": "Format",
                                          "Value": "Books"},
                                  index={"source": 0, "method": 1, "format": 2, "Value": 3}),
                         sort_by("Books")],
        overrides=[override("Books", {"custom.cellOptions": {"type": "gauge", "mode": "gradient"}})]))
    p.append(timeseries(
        "Enforcements and conversions",
        "Metadata enforcements by trigger and format conversions per hour. Failed triggers feed the "
        "ActivityConversionFailures alert.",
        [target(f"sum by (trigger) (increase(activity_enforcements_total{sel()}[$__interval]))",
                "enforcement {{trigger}}", "A"),
         target(f"sum by (from_format, to_format) (increase(activity_conversions_total{sel()}[$__interval]))",
                "convert {{from_format}} → {{to_format}}", "B")],
        "short", w=12, h=9, draw="bars", stack=True, interval="1h"))
    return p


def api_panels():
    req = "activity_api_requests_total"
    p = [row("API usage")]
    p += [
        stat("API requests", "Requests to tracked endpoints (OPDS, Kobo Sync, REST API, Web UI) in the selected "
             "range.", f"sum(increase({req}{sel()}[$__range]))", w=6),
        stat("Kobo Sync requests", "Kobo device/app synchronisation calls in the selected range; zero for hours "
             "while devices normally sync raises ActivityKoboSyncStopped.",
             f'sum(increase({req}{sel(category="Kobo Sync")}[$__range]))', w=6),
        stat("5xx error ratio", "Share of requests in the selected range that answered 5xx.",
             f'(sum(increase({req}{sel(status="~5..")}[$__range])) or vector(0)) / '
             f"clamp_min(sum(increase({req}{sel()}[$__range])), 1)",
             unit="percentunit", decimals=2, w=6,
             thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 0.01},
                         {"color": "red", "value": 0.05}]),
        stat("p95 latency", "95th percentile response time over all tracked endpoints in the selected range.",
             f"histogram_quantile(0.95, sum by (le) (increase(activity_api_request_duration_seconds_bucket{sel()}[$__range])))",
             unit="s", decimals=3, w=6,
             thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 1},
                         {"color": "red", "value": 2}]),
    ]
    p.append(pie(
        "API category breakdown",
        "Requests by category in the selected range: OPDS (ebook reader apps), Kobo Sync (devices), REST API "
        "(integrations), Web UI (browser baseline). Seed: API Usage Breakdown.",
        f"sum by (category) (increase({req}{sel()}[$__range]))", "{{category}}"))
    p.append(timeseries(
        "Requests per second by category",
        "Request rate per API category over time.",
        [target(f"sum by (category) (rate({req}{sel()}[$__rate_interval]))", "{{category}}")],
        "reqps", w=16, h=8, stack=True, fill=30))
    total = f"sum by (category, endpoint) (increase({req}{sel()}[$__range]))"
    p.append(table(
        "Top endpoints",
        "The 20 most-called endpoint patterns in the selected range (ids and uuids folded to *, e.g. "
        "/kobo/*/state), with call count and share of all calls. Seed: Endpoint Frequency.",
        [target(f"topk(20, {total})", fmt="table", instant=True, ref="A"),
         target(f"topk(20, {total}) / scalar(sum(increase({req}{sel()}[$__range])))", fmt="table", instant=True,
                ref="B")],
        w=24, h=10,
        transformations=[MERGE, organize(rename={"category": "Category", "endpoint": "Endpoint",
                                                 "Value #A": "Calls", "Value #B": "% of total"},
                                         index={"endpoint": 0, "category": 1, "Value #A": 2, "Value #B": 3}),
                         sort_by("Calls")],
        overrides=[override("% of total", {"unit": "percentunit", "decimals": 1,
                                           "custom.cellOptions": {"type": "gauge", "mode": "basic"},
                                           "min": 0, "max": 1})]))
    p.append(hour_heatmap(
        "API requests by hour of day",
        "Heatmap of API requests per hour-of-day slot (rows 00-23) for each day (columns): reveals automated "
        "sync schedules. Seed: API Heatmap.",
        "activity_api_requests_by_hour_total"))
    p.append(weekday_hour_matrix(
        "API heatmap: weekday × hour",
        "API requests in the selected range by day of week (rows) and hour of day (columns), colour scaled by "
        "count: plan maintenance windows, spot unusual access. Seed: API Heatmap.",
        "activity_api_requests_by_hour_total"))
    p.append(row("Errors and latency (beyond the seed)"))
    err = f'sum by (category) (rate({req}{sel(status="~5..")}[$__rate_interval]))'
    allr = f"sum by (category) (rate({req}{sel()}[$__rate_interval]))"
    p.append(timeseries(
        "5xx error ratio by category",
        "Share of requests answered 5xx, per category. ActivityApiErrorRatioHigh fires above 5% for 10m.",
        [target(f"({err} or {allr} * 0) / {allr}", "{{category}}")],
        "percentunit", w=12, h=8))
    lat = f"sum by (category, le) (rate(activity_api_request_duration_seconds_bucket{sel()}[$__rate_interval]))"
    p.append(timeseries(
        "Latency percentiles by category",
        "p50, p95 and p99 response time per category from the request-duration histogram. "
        "ActivityApiLatencyHigh fires when p95 stays above 2s for 10m.",
        [target(f"histogram_quantile(0.5, {lat})", "p50 {{category}}", "A"),
         target(f"histogram_quantile(0.95, {lat})", "p95 {{category}}", "B"),
         target(f"histogram_quantile(0.99, {lat})", "p99 {{category}}", "C")],
        "s", w=12, h=8))
    p.append(bargauge(
        "Requests by status",
        "Requests in the selected range by HTTP status code.",
        f"sort_desc(sum by (status) (increase({req}{sel()}[$__range])))", "{{status}}", w=12))
    p.append(bargauge(
        "Requests by method",
        "Requests in the selected range by HTTP method.",
        f"sort_desc(sum by (method) (increase({req}{sel()}[$__range])))", "{{method}}", w=12))
    p.append(row("Exporter health"))
    p += [
        stat("Exporter up", "1 when Prometheus can scrape the exporter (up metric).",
             f"min(up{sel()})", unit="bool_yes_no", w=4,
             thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 1}]),
        stat("Activity DB up", "1 when the exporter can read the activity store (cwa.db / PostgreSQL).",
             f'min(activity_exporter_database_up{sel(database="activity")})', unit="bool_yes_no", w=4,
             thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 1}]),
        stat("Calibre DB up", "1 when the exporter can read the Calibre metadata.db (absent when no library is "
             "configured).",
             f'min(activity_exporter_database_up{sel(database="calibre")})', unit="bool_yes_no", w=4,
             thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 1}]),
        stat("Last refresh age", "Seconds since the last successful refresh; ActivityExporterRefreshStale fires "
             "above 10 minutes.",
             f"time() - max(activity_exporter_last_refresh_success_timestamp_seconds{sel()})", unit="s", w=4,
             thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 120},
                         {"color": "red", "value": 600}]),
        stat("Events dropped by the shim", "Events the logging shim could not store in the selected range "
             "(database locked, full, read-only); any drop raises ActivityShimDroppingEvents.",
             f"sum(increase(activity_exporter_events_dropped_total{sel()}[$__range])) or vector(0)", w=4,
             thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}]),
        stat("Exporter version", "Version of the running exporter (activity_exporter_build_info).",
             f"max by (version) (activity_exporter_build_info{sel()})", unit="none", w=4, legend="{{version}}"),
    ]
    p[-1]["options"]["textMode"] = "name"
    p.append(timeseries(
        "Refresh duration",
        "p50 / p95 duration of the refresher's fold of new rows (O(new rows), not O(table)).",
        [target(f"histogram_quantile(0.5, sum by (le) (rate(activity_exporter_refresh_duration_seconds_bucket{sel()}[$__rate_interval])))", "p50", "A"),
         target(f"histogram_quantile(0.95, sum by (le) (rate(activity_exporter_refresh_duration_seconds_bucket{sel()}[$__rate_interval])))", "p95", "B")],
        "s", w=8, h=8))
    p.append(timeseries(
        "Rows ingested per second",
        "Rows the refresher folded into the metrics, per source table.",
        [target(f"sum by (table) (rate(activity_exporter_rows_ingested_total{sel()}[$__rate_interval]))", "{{table}}")],
        "ops", w=8, h=8))
    p.append(timeseries(
        "Errors and malformed rows",
        "Refresh errors by stage and malformed rows by table/reason skipped by the refresher (per second).",
        [target(f"sum by (stage) (rate(activity_exporter_refresh_errors_total{sel()}[$__rate_interval])) or vector(0)",
                "error {{stage}}", "A"),
         target(f"sum by (table, reason) (rate(activity_exporter_malformed_rows_total{sel()}[$__rate_interval])) or vector(0)",
                "malformed {{table}} {{reason}}", "B")],
        "ops", w=8, h=8))
    return p


# ------------------------------------------------------------------------------------------------ assembly


def layout(panels):
    """Place panels left to right in 24 columns, wrapping rows; ids are assigned in order (stable)."""
    x = y = row_h = 0
    for i, p in enumerate(panels, start=1):
        p["id"] = i
        g = p["gridPos"]
        if p["type"] == "row":
            y += row_h
            x, row_h = 0, 0
            g.update(x=0, y=y)
            y += 1
            continue
        if x + g["w"] > 24:
            y += row_h
            x, row_h = 0, 0
        g.update(x=x, y=y)
        x += g["w"]
        row_h = max(row_h, g["h"])
    return panels


def links(current):
    out = []
    for key in ("activity", "library", "api"):
        if key == current:
            continue
        out.append({"title": TITLES[key].split(" / ", 1)[1], "type": "link", "url": f"/d/{UIDS[key]}",
                    "icon": "dashboard", "includeVars": False, "keepTime": True, "asDropdown": False,
                    "targetBlank": False, "tags": [], "tooltip": f"Open {TITLES[key]}"})
    return out


def dashboard(key, panels, variables, description):
    return {
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
            "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
            "type": "dashboard"}]},
        "description": description,
        "editable": False,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "links": links(key),
        "panels": layout(panels),
        "refresh": "1m",
        "schemaVersion": SCHEMA_VERSION,
        "tags": [TAG],
        "templating": {"list": variables},
        "time": {"from": "now-30d", "to": "now"},
        "timepicker": {"refresh_intervals": ["30s", "1m", "5m", "15m", "1h"]},
        "timezone": "browser",
        "title": TITLES[key],
        "uid": UIDS[key],
        "version": 1,
        "weekStart": "",
    }


def build() -> dict[str, dict]:
    uid = provisioned_datasource_uid()
    return {
        "activity": dashboard("activity", activity_panels(), base_variables(uid, user=True, window=True),
                              "What users do: events, reading, formats, discovery, devices, sessions, searches, "
                              "shelves (seed 000, User Activity tab)."),
        "library": dashboard("library", library_panels(), base_variables(uid),
                             "Calibre library composition and growth, imports, conversions, enforcement (seed 000, "
                             "Library Statistics tab)."),
        "api": dashboard("api", api_panels(), base_variables(uid),
                         "OPDS, Kobo Sync, REST API and Web UI traffic, errors and latency, plus the exporter's own "
                         "health (seed 000, API Usage tab)."),
    }


def render(d: dict) -> str:
    return json.dumps(d, indent=2, ensure_ascii=False) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the committed JSON differs; write nothing")
    ap.add_argument("--out", type=Path, default=OUT_DIR, help="output folder (default: grafana/dashboards)")
    args = ap.parse_args(argv)
    stale = []
    for key, d in build().items():
        path = args.out / f"{key}.json"
        text = render(d)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("out of date (run python grafana/generate.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
