"""Old import path of the native observability backend; import from
``tests.support.stack.backend`` / ``.configs`` / ``.paths`` instead.

Kept only while work in progress elsewhere still imports it.
"""

from __future__ import annotations

from tests.support.alerts import AlertReceiver, Notification
from tests.support.stack.alerting import Alertmanager, Prometheus
from tests.support.stack.backend import Collector, Jaeger, jaeger_spans, otlp_attrs
from tests.support.stack.configs import (
    AM_GROUP_INTERVAL,
    AM_GROUP_WAIT,
    AM_WEBHOOK_PLACEHOLDER,
    EVALUATION_INTERVAL,
    METRIC_EXPIRATION,
    OBS_METRIC_EXPORT_INTERVAL_MS,
    RULE_FOR,
    SCRAPE_INTERVAL,
    alert_rules_test_copy,
    alertmanager_test_config,
    prometheus_test_config,
)
from tests.support.stack.env import clean_env as base_env
from tests.support.stack.net import http_json, http_text
from tests.support.stack.paths import (
    APT_HINT,
    BUILD_HINT,
    CACHE_BIN,
    COLLECTOR_DIR,
    GRAFANA_DIR,
    JAEGER_CONFIG,
    PROM_DIR,
    REPO,
    alertmanager_binary,
    find_binary,
    jaeger_binary,
    otelcol_binary,
    prometheus_binary,
)

__all__ = [
    "AM_GROUP_INTERVAL",
    "AM_GROUP_WAIT",
    "AM_WEBHOOK_PLACEHOLDER",
    "APT_HINT",
    "BUILD_HINT",
    "CACHE_BIN",
    "COLLECTOR_DIR",
    "EVALUATION_INTERVAL",
    "GRAFANA_DIR",
    "JAEGER_CONFIG",
    "METRIC_EXPIRATION",
    "OBS_METRIC_EXPORT_INTERVAL_MS",
    "PROM_DIR",
    "REPO",
    "RULE_FOR",
    "SCRAPE_INTERVAL",
    "AlertReceiver",
    "Alertmanager",
    "Collector",
    "Jaeger",
    "Notification",
    "Prometheus",
    "alert_rules_test_copy",
    "alertmanager_binary",
    "alertmanager_test_config",
    "base_env",
    "find_binary",
    "http_json",
    "http_text",
    "jaeger_binary",
    "jaeger_spans",
    "otelcol_binary",
    "otlp_attrs",
    "prometheus_binary",
    "prometheus_test_config",
]
