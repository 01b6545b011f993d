"""The real exporter process: /metrics (text and OpenMetrics, promtool-clean), /healthz, restarts, CLI errors."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest

from tests.activity_fixture import make_rows, valid_count, write_rows
from tests.exporter_process import ROOT, exporter, get, wait_until
from tests.promtext import by_label, samples

FAST = {"ACTIVITY_EXPORTER_REFRESH_INTERVAL": "0.3", "ACTIVITY_EXPORTER_CHECKPOINT_INTERVAL": "0.5"}


def metric_values(base: str) -> dict:
    status, _, body = get(base + "/metrics")
    assert status == 200
    return samples(body)


def events_total(base: str) -> float:
    return sum(by_label(metric_values(base), "activity_events_total", "event_type", "user").values())


def ingested(base: str) -> float:
    return by_label(metric_values(base), "activity_exporter_rows_ingested_total", "table").get("cwa_user_activity", 0)


@pytest.fixture
def db_path(tmp_path):
    path = str(tmp_path / "cwa.db")
    write_rows(path, make_rows(1500, seed=11))
    return path


def test_metrics_formats_and_promtool(db_path, tmp_path):
    with exporter("--activity-db", db_path, env=FAST) as (base, _):
        wait_until(lambda: events_total(base) == valid_count(db_path))
        status, headers, body = get(base + "/metrics")
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        promtool = shutil.which("promtool")
        if promtool:
            check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True)
            assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), check.stderr
        status, headers, body = get(base + "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"})
        assert headers["Content-Type"].startswith("application/openmetrics-text")
        assert body.rstrip().endswith(b"# EOF")
        status, headers, body = get(base + "/metrics", {"Accept-Encoding": "gzip"})
        assert headers.get("Content-Encoding") == "gzip"
        status, _, body = get(base + "/")
        assert status == 200 and b"/metrics" in body
        if not promtool:
            pytest.skip("promtool not installed (Debian package prometheus); formats checked, lint skipped")


def test_healthz_reports_a_broken_database(db_path):
    with exporter("--activity-db", db_path, env=FAST) as (base, _):
        wait_until(lambda: get(base + "/healthz")[0] == 200)
        total = events_total(base)
        os.rename(db_path, db_path + ".away")
        wait_until(lambda: by_label(metric_values(base), "activity_exporter_database_up", "database")["activity"] == 0)
        assert events_total(base) == total  # last good numbers still served
        # /healthz turns 503 once the last success is older than 3 intervals (30 s floor): not waited for here.
        os.rename(db_path + ".away", db_path)
        wait_until(lambda: by_label(metric_values(base), "activity_exporter_database_up", "database")["activity"] == 1)


def test_healthz_503_without_any_successful_refresh(tmp_path):
    missing = str(tmp_path / "missing.db")
    with exporter("--activity-db", missing, env=FAST) as (base, _):
        status, _, body = get(base + "/healthz")
        assert status == 503 and b"unhealthy" in body
        assert by_label(metric_values(base), "activity_exporter_database_up", "database")["activity"] == 0


def test_kill_and_restart_mid_stream(tmp_path):
    """SIGKILL between checkpoints: after a restart, counters continue and no row is counted twice."""
    path, state_file = str(tmp_path / "cwa.db"), str(tmp_path / "state.json")
    rows = make_rows(4000, seed=12)
    write_rows(path, rows[:2000])
    with exporter("--activity-db", path, "--state", state_file, env=FAST) as (base, proc):
        wait_until(lambda: events_total(base) == valid_count(path))
        wait_until(lambda: os.path.exists(state_file))
        write_rows(path, rows[2000:3000])
        wait_until(lambda: events_total(base) == valid_count(path))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    write_rows(path, rows[3000:])
    with exporter("--activity-db", path, "--state", state_file, env=FAST) as (base, _):
        wait_until(lambda: events_total(base) == valid_count(path))
        assert ingested(base) == len(rows)  # every row read exactly once across both runs


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "exporter", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT, **(env or {})}, timeout=60)


@pytest.mark.parametrize("args,env,key", [
    (["check-config", "--refresh-interval", "soon"], {}, "refresh_interval"),
    (["check-config", "--listen", "nowhere"], {}, "listen"),
    (["check-config"], {"ACTIVITY_EXPORTER_USER_LABEL": "email"}, "user_label"),
    (["check-config"], {"ACTIVITY_EXPORTER_NO_SUCH_KEY": "1"}, "no_such_key"),
    (["check-config", "--calibre-library", "/nonexistent/library"], {}, "calibre_library"),
    (["check-config"], {"ACTIVITY_EXPORTER_TIMEZONE": "Mars/Olympus"}, "timezone"),
    (["serve", "--refresh-interval", "-5"], {}, "refresh_interval"),
    (["check-config", "--activity-db", "/"], {}, "activity_db"),
    (["check-config", "--state", "/proc"], {}, "state"),
    (["serve"], {"ACTIVITY_EXPORTER_WEB_CONFIG": "/nonexistent/web.yml"}, "web_config"),
    (["serve"], {"ACTIVITY_EXPORTER_METRICS_AUTH": "true"}, "metrics_auth"),
])
def test_invalid_config_exits_2_naming_the_key(args, env, key):
    result = run_cli(*args, env=env)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"'{key}'" in lines[0], result.stderr


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("refresh_interval: 15s\nwindowz: [1d]\n")
    result = run_cli("check-config", "--config", str(bad))
    assert result.returncode == 2 and "'windowz'" in result.stderr
    good = tmp_path / "good.yml"
    shutil.copy(os.path.join(ROOT, "config.example.yml"), good)
    result = run_cli("check-config", "--config", str(good))
    assert result.returncode == 0 and "config OK" in result.stdout


def test_example_config_is_in_sync_with_the_spec():
    from exporter.config import example_yaml

    with open(os.path.join(ROOT, "config.example.yml"), encoding="utf-8") as f:
        assert f.read().strip() == example_yaml().strip(), "regenerate: python -c 'from exporter.config import example_yaml; print(example_yaml())' > config.example.yml"


def test_serves_while_the_first_refresh_runs(tmp_path):
    """A cold ingest of a big history runs in the background: the port answers at once, /healthz says why it
    is not ready yet, and /metrics already carries the exporter's own metrics."""
    from benchmarks.gen import generate

    path = str(tmp_path / "big.db")
    generate(path, 400_000)
    with exporter("--activity-db", path, env=FAST) as (base, _):
        status, _, body = get(base + "/healthz")
        assert status == 503 and b"no successful refresh yet" in body
        values = metric_values(base)
        assert by_label(values, "activity_exporter_build_info", "version")
        wait_until(lambda: get(base + "/healthz")[0] == 200, timeout=120)
        assert ingested(base) == 400_000
