"""Reading the committed ops files: alert and recording rules, Grafana dashboards,
datasources, and the dashboard generator.

Shared by the static checks (test_ops_configs.py) and the live ones, so both
look at exactly the same expressions.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import yaml

from tests.support.stack.paths import GRAFANA_DIR, PROM_DIR, REPO

DASHBOARD_DIR = GRAFANA_DIR / "dashboards"
DATASOURCES = GRAFANA_DIR / "provisioning" / "datasources" / "datasources.yaml"
DOCS = REPO / "docs" / "observability.md"
GENERATOR = GRAFANA_DIR / "generate.py"


def _exporter_environment() -> str:
    """The deployment_environment_name prometheus.yml gives the Redis and
    PostgreSQL exporters' targets (their series carry none of their own)."""
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    found = {
        static["labels"]["deployment_environment_name"]
        for job in config["scrape_configs"]
        if job["job_name"] in ("redis", "postgres")
        for static in job["static_configs"]
    }
    assert len(found) == 1, found
    return found.pop()


INFRA_ENVIRONMENT = _exporter_environment()


def load_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROM_DIR / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def load_alert_rules() -> list[dict[str, Any]]:
    return [rule for rule in load_rules() if "alert" in rule]


def load_recording_rules() -> list[dict[str, Any]]:
    return [rule for rule in load_rules() if "record" in rule]


@functools.cache
def dashboard_generator() -> ModuleType:
    """grafana/generate.py as a module (it is a script, not part of a package)."""
    spec = importlib.util.spec_from_file_location("wabot_grafana_generate", GENERATOR)
    assert spec is not None, GENERATOR
    assert spec.loader is not None, GENERATOR
    module = importlib.util.module_from_spec(spec)
    # Registered first: its dataclasses resolve their annotations through it.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def load_dashboards() -> dict[str, dict[str, Any]]:
    files = sorted(DASHBOARD_DIR.glob("*.json"))
    assert {f.name for f in files} >= {"pipeline-overview.json", "collector-health.json"}
    return {f.name: json.loads(f.read_text()) for f in files}


def provisioned_uids() -> dict[str, str]:
    doc = yaml.safe_load(DATASOURCES.read_text())
    return {ds["uid"]: ds["type"] for ds in doc["datasources"]}


def dashboard_prom_exprs() -> list[tuple[str, str]]:
    """(where, expr) of every Prometheus query in the dashboards, variables included."""
    uids = provisioned_uids()
    exprs = []
    for fname, dash in load_dashboards().items():
        for panel in iter_panels(dash["panels"]):
            for target in panel.get("targets", []):
                ds = target.get("datasource") or panel.get("datasource") or {}
                if uids.get(str(ds.get("uid"))) == "prometheus":
                    exprs.append((f"{fname}: {panel['title']} [{target['refId']}]", target["expr"]))
        for var in dash.get("templating", {}).get("list", []):
            query = var.get("query")
            if isinstance(query, dict):
                query = query.get("query", "")
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query or "")
            if match:
                exprs.append((f"{fname}: variable {var['name']}", match.group(1)))
    return exprs


def grafana_to_promql(expr: str, interval: str = "5m", variables: str = ".*") -> str:
    """Replace Grafana's built-in and template variables so Prometheus can run it."""
    expr = re.sub(r"\$__(rate_interval|interval|range)\b", interval, expr)
    # Template variables are named like identifiers; `$1` in label_replace is not one.
    return re.sub(r"\$\{?[A-Za-z_]\w*\}?", variables, expr)


# A comparison with a number (`> 0.05`, `== 0`): the alert threshold.
_THRESHOLD = re.compile(r"\s*(?:[<>]=?|[=!]=)\s*(?:bool\s+)?-?\d+(?:\.\d+)?(?![\w.])")


def strip_thresholds(expr: str) -> str:
    """An alert expression without its threshold comparisons: the quantity it watches.

    The quantity exists whenever the pipeline reports the inputs; the alert
    expression itself is (correctly) empty until the threshold is crossed.
    """
    return _THRESHOLD.sub("", expr)
