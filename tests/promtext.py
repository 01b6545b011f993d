"""Read Prometheus text exposition into {(sample name, frozenset(labels)): value} for assertions."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str | bytes) -> dict:
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def by_label(values: dict, name: str, *labels: str) -> dict:
    """{label values tuple (or single value): sample value} for one sample name."""
    out = {}
    for (sample, label_set), value in values.items():
        if sample != name:
            continue
        d = dict(label_set)
        key = tuple(d.get(label) for label in labels)
        out[key[0] if len(key) == 1 else key] = value
    return out
