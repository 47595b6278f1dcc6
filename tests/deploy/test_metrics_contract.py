"""Every metric the dashboard and the rules query is one a real server exports, and the README's
metrics table lists exactly the server's metrics, with their types and labels.

The exported names come from a running server's /metrics after one inference, not from a list
kept by hand: renaming a metric in the service breaks this test, not the dashboards in production.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from prometheus_client.parser import text_string_to_metric_families

from onnx_builders import affine_config, affine_graph, write_model
from promql import dashboard_expressions, metric_names, rule_expressions

ROOT = Path(__file__).resolve().parents[2]
RULES = sorted((ROOT / "deploy/prometheus/rules").glob("*.yml"))
DASHBOARDS = sorted((ROOT / "deploy/grafana/dashboards").glob("*.json"))
# Series Prometheus itself attaches to every target.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",),
            "summary": ("", "_count", "_sum"), "info": ("_info",)}


@pytest.fixture(scope="module")
def metrics_text(tmp_path_factory) -> str:
    from servers import start_server

    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "affine", affine_graph(2.0, 1.0), affine_config())
    server = start_server(repo)
    try:
        with triton.InferenceServerClient(server.grpc_address) as client:
            x = triton.InferInput("x", [1, 4], "FP32")
            x.set_data_from_numpy(np.ones((1, 4), np.float32))
            client.infer("affine", [x])
        text = server.metrics_text()
    finally:
        assert server.terminate() == 0
    return text


@pytest.fixture(scope="module")
def exported(metrics_text) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(metrics_text):
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def readme_metrics() -> dict[str, tuple[str, set[str]]]:
    """The README's metrics table: each metric name (as a query names it) -> (type, labels)."""
    section = (ROOT / "README.md").read_text().split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    table = {}
    for row in section.splitlines():
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`"):
            labels = {label.strip() for label in cells[2].split(",")}
            for name in re.findall(r"`(\w+)`", cells[0]):
                table[name] = (cells[1], labels)
    return table


def test_the_server_exports_what_the_readme_lists_with_those_labels(metrics_text):
    documented = readme_metrics()
    assert len(documented) == 13
    families = {}
    for family in text_string_to_metric_families(metrics_text):
        families[family.name + ("_total" if family.type == "counter" else "")] = family
    for name, (kind, labels) in documented.items():
        family = families.get(name)
        assert family is not None, f"README lists {name}; the server does not export it"
        assert family.type == kind, (name, family.type)
        for sample in family.samples:  # labelled metrics show samples once a child exists
            if not sample.name.endswith(("_created", "_bucket")):
                assert set(sample.labels) == labels, (name, sample.labels)
    ours = {name for name in families if name.startswith("inference_")}
    assert ours == set(documented), "metrics exported but not in the README's table"


@pytest.mark.parametrize("rules", RULES, ids=lambda p: p.name)
def test_rules_use_only_exported_metrics(rules, exported):
    expressions, recorded = rule_expressions(rules)
    used = set().union(*map(metric_names, expressions))
    assert "inference_model_ready" in used
    unknown = used - exported - PROMETHEUS_SERIES - recorded
    assert not unknown, f"{rules.name} queries metrics the service does not export: {unknown}"


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_uses_only_exported_metrics(dashboard, exported):
    used = set().union(*map(metric_names, dashboard_expressions(dashboard)))
    assert {"inference_requests_total", "inference_batch_size_bucket",
            "inference_queue_depth", "inference_execution_provider_info"} <= used
    unknown = used - exported - PROMETHEUS_SERIES
    assert not unknown, f"{dashboard.name} queries metrics the service does not export: {unknown}"


def test_metric_name_extraction():
    expr = ('histogram_quantile(0.99, sum by (le, model) (rate(foo_bucket{rpc="a{b}",model=~"$m"}'
            '[$__rate_interval]))) / on (model) group_left bar_total offset 5m and up == 1')
    assert metric_names(expr) == {"foo_bucket", "bar_total", "up"}
