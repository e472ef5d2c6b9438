"""The hand-in's Prometheus files: 2.prometheus.yml, the rule file it loads (shipped beside it) and the runbooks.

Rendered from `msml.monitoring.definitions` and `msml.monitoring.render` (the same recording rules and alerts the
gateway's stack runs), restricted to what `3.prometheus_exporter.py` exports: a rule whose expression reads a
metric the exporter does not have is left out, never shipped to show "no data". Scrape target: the exporter.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from msml.config import DEFAULT_PORTS
from msml.handin.names import EXPORTER, PROMETHEUS_RULES, PROMETHEUS_YML, RUNBOOKS

SCRAPE_INTERVAL = "15s"
NAME = re.compile(r"[a-zA-Z_:][\w:]*")  # PromQL identifiers; recording-rule names hold colons
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def exporter_series() -> set[str]:
    """Every series name `3.prometheus_exporter.py` exposes (histograms with their _bucket/_sum/_count), plus the
    process collector's CPU and memory."""
    from prometheus_client import Histogram

    from msml.handin.course import EXPORTER_METRICS, exported_names
    from msml.monitoring.metrics import PROCESS_CPU, PROCESS_MEMORY, GatewayMetrics

    names = set(exported_names())
    gateway = GatewayMetrics()
    for attr in EXPORTER_METRICS:
        metric = getattr(gateway, attr)
        if isinstance(metric, Histogram):
            names |= {metric._name + suffix for suffix in HISTOGRAM_SERIES}
    return names | {PROCESS_CPU, PROCESS_MEMORY}


def series_read(expr: str) -> set[str]:
    """The metric and recording-rule names an expression reads (`up` aside: Prometheus makes it for every target)."""
    return {n for n in NAME.findall(expr) if n.startswith(("msml_", "process_")) or ":" in n}


def reads_only(expr: str, available: set[str]) -> bool:
    return series_read(expr) <= available


def rules() -> dict:
    """The recording rules and alerts of the gateway's stack that read only the exporter's series (one file)."""
    from msml.monitoring.render import alerting_rules, recording_rules

    available = exporter_series()
    groups = []
    for group in recording_rules()["groups"]:
        kept = [r for r in group["rules"] if reads_only(r["expr"], available)]
        available |= {r["record"] for r in kept}
        groups.append({"name": "recording", "rules": kept})
    for group in alerting_rules()["groups"]:
        kept = []
        for rule in group["rules"]:
            if reads_only(rule["expr"], available):
                annotations = {**rule["annotations"], "runbook_url": f"{RUNBOOKS}#{rule['alert'].lower()}"}
                kept.append({**rule, "annotations": annotations})
        groups.append({"name": "alerts", "rules": kept})
    return {"groups": groups}


def prometheus_config() -> dict:
    from msml.monitoring.definitions import GATEWAY_JOB, PROMETHEUS_JOB

    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [PROMETHEUS_RULES],
        "scrape_configs": [
            {
                "job_name": GATEWAY_JOB,
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{DEFAULT_PORTS.gateway}"]}],
            },
            {"job_name": PROMETHEUS_JOB, "static_configs": [{"targets": [f"127.0.0.1:{DEFAULT_PORTS.prometheus}"]}]},
        ],
    }


def _yaml(data: object) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=1000, allow_unicode=True)


def prometheus_files() -> dict[str, str]:
    """{file name in `Monitoring dan Logging/`: text}."""
    from msml.handin.course import fill
    from msml.monitoring.definitions import runbook_values
    from msml.monitoring.drift import DEFAULT_WINDOW

    config = (
        f"# Prometheus for {EXPORTER}: scrapes it every {SCRAPE_INTERVAL} (job `gateway`: the exporter is the gateway\n"
        f"# between the clients and the model server) and evaluates the rules of {PROMETHEUS_RULES} beside this file.\n"
        f"# Run from this folder:  prometheus --config.file={PROMETHEUS_YML}\n"
    ) + _yaml(prometheus_config())
    rule_text = (
        f"# Recording rules and alerts over the metrics of {EXPORTER}, loaded by {PROMETHEUS_YML}.\n"
        f"# Check:  promtool check rules {PROMETHEUS_RULES}\n"
    ) + _yaml(rules())
    runbooks = fill(
        (Path(__file__).parent / "templates" / "alert_runbooks.md.tmpl").read_text(),
        {
            "model_port": DEFAULT_PORTS.model_server,
            "gateway_port": DEFAULT_PORTS.gateway,
            "drift_window": DEFAULT_WINDOW,
            **runbook_values(),
        },
    )
    return {PROMETHEUS_YML: config, PROMETHEUS_RULES: rule_text, RUNBOOKS: runbooks}
