"""Every metric the exporter exposes is documented in docs/ (name, type, labels, meaning)."""

from __future__ import annotations

import re

from exporter import config as config_mod
from exporter import demo
from exporter.refresher import Refresher
from tests.test_dashboards import documented


def test_every_exposed_metric_is_documented(tmp_path):
    paths = demo.generate(str(tmp_path / "demo"), days=3, seed=7)
    config = config_mod.load(overrides={
        "activity_db": paths["activity_db"], "calibre_library": paths["calibre_library"],
        "report_include_errors": True,
    })
    refresher = Refresher(config)
    assert refresher.refresh(), refresher.last_error
    exposed = set(re.findall(r"^# TYPE (\S+) ", refresher.snapshot.text.decode(), re.M))
    assert len(exposed) > 40
    missing = exposed - documented()
    assert not missing, f"exposed but not documented in docs/metrics*.md: {sorted(missing)}"
