"""The monitoring definitions as Prometheus Operator resources for deploy/kubernetes/ (a ServiceMonitor per
scrape job, the rules as one PrometheusRule), rendered with the other monitoring files (`msml monitoring render`),
so the staleness check covers them and the cluster alerts on exactly what monitoring/prometheus/rules/ holds.

The ServiceMonitors select the Services of deploy/kubernetes/base by their `app` label and name their `http`
port; they set the `job` label to the job names the rules and dashboards filter on (the Operator would otherwise
use the Service's name). tests/integration/test_kubernetes.py checks both against the kustomize output.
"""

from __future__ import annotations

from msml.monitoring.definitions import GATEWAY_JOB, MLFLOW_JOB

BASE_DIR = "deploy/kubernetes/base"
PART_OF = {"app.kubernetes.io/part-of": "msml"}
# Scrape job → the `app` label of the Service that exposes it (deploy/kubernetes/base/*.yaml).
SCRAPED_APPS = {GATEWAY_JOB: "gateway", MLFLOW_JOB: "mlflow-server"}
METRICS_PORT = "http"  # the Services' port name


def service_monitor(job: str, interval: str) -> dict:
    """Scrape every pod behind the Service labelled `app: SCRAPED_APPS[job]` on its http port, as job `job`."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": f"msml-{job}", "labels": dict(PART_OF)},
        "spec": {
            "selector": {"matchLabels": {"app": SCRAPED_APPS[job]}},
            "endpoints": [
                {
                    "port": METRICS_PORT,
                    "path": "/metrics",
                    "interval": interval,
                    "relabelings": [{"action": "replace", "targetLabel": "job", "replacement": job}],
                }
            ],
        },
    }


def prometheus_rule(rule_groups: list[dict]) -> dict:
    """The recording and alerting rule groups (as Prometheus rule files hold them) in one PrometheusRule."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "msml", "labels": dict(PART_OF)},
        "spec": {"groups": rule_groups},
    }
