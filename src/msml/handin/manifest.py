"""`evidence.json`: what made each image of the hand-in, written beside the evidence by `msml handin`.

For each image: the file (relative to `SMSML_<student>/`), the URL or the commands typed, the process that served it
(as the student runs it: `~/...`, `python`), its time range (epoch seconds), the metric names on it and, for a
Prometheus graph, the scrape target each series came from. Around them: the traffic phases (7.inference.py), the
Prometheus scrape targets, the names the exporter exported (its last /metrics), and the steps' durations.
A test holds the manifest to the exporter: every metric named is exported, every target scraped is the exporter.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import urllib.request
from pathlib import Path

MANIFEST = "evidence.json"
# A metric name in PromQL (recording-rule names carry `:` and are resolved first).
_NAME = re.compile(r"\b(?:msml|process|python)_[a-z0-9_]+\b")


def metric_names(exprs: list[str]) -> list[str]:
    """The exported series names the expressions read (recording rules replaced by their own expressions)."""
    from msml.monitoring.definitions import RECORDING_RULES

    names: set[str] = set()
    for expr in exprs:
        for rule in RECORDING_RULES:
            expr = expr.replace(rule.record, f"({rule.expr})")
        names.update(_NAME.findall(expr))
    return sorted(names)


def sources(prom_url: str, names: list[str], job: str) -> list[dict[str, str]]:
    """{job, instance} of the scrape targets the series of `names` in `job` (what a graph selects) came from."""
    selector = "|".join(re.escape(n) for n in names)
    query = urllib.parse.urlencode({"query": f'count by (job, instance) ({{__name__=~"{selector}",job="{job}"}})'})
    with urllib.request.urlopen(f"{prom_url}/api/v1/query?{query}", timeout=10) as response:
        result = json.loads(response.read())["data"]["result"]
    return sorted(
        ({"job": r["metric"].get("job", ""), "instance": r["metric"].get("instance", "")} for r in result),
        key=lambda s: (s["job"], s["instance"]),
    )


def grafana_rule_series(prom_url: str) -> dict[str, int]:
    """{alert: series its Grafana rule's query returns now} for the alerts `msml evidence grafana` fires, evaluated
    against this Prometheus (no Grafana here: its rules are proven by their PromQL seeing the hand-in's data)."""
    from msml.handin.grafana import ALERT_NAMES
    from msml.monitoring.definitions import alert

    found = {}
    for name in ALERT_NAMES:
        query = urllib.parse.urlencode({"query": alert(name).grafana_query})
        with urllib.request.urlopen(f"{prom_url}/api/v1/query?{query}", timeout=10) as response:
            found[name] = len(json.loads(response.read())["data"]["result"])
    return found


def exporter_scrape(exporter_url: str, keep: Path) -> dict:
    """The exporter's /metrics now (kept at `keep` for the tests): {family and sample names it exports}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{exporter_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    keep.write_text(text)
    samples = sorted({s.name for f in text_string_to_metric_families(text) for s in f.samples})
    return {"url": f"{exporter_url}/metrics", "samples": samples}


def write(
    ws,
    images: list[dict],
    phases: list[dict],
    scrape: dict,
    targets: list[dict],
    config: Path,
    profile,
    seconds: dict[str, float],
    skipped: dict[str, str],
    grafana_rules: dict[str, int],
) -> Path:
    """evidence.json in the workspace's submission folder; returns its path."""
    manifest = {
        "workspace": ws.shown(ws.submission),
        "profile": profile.name,
        "written": time.time(),
        "steps": [s.as_dict() for s in ws.steps],
        "traffic": phases,
        "prometheus": {
            "config": config.name,
            "scrape_targets": [
                {
                    "job": t["labels"].get("job"),
                    "instance": t["labels"].get("instance"),
                    "url": t["scrapeUrl"],
                    "health": t["health"],
                }
                for t in targets
            ],
        },
        "exporter": scrape,
        "images": images,
        "panels_not_shown": skipped,
        "grafana_rule_series": grafana_rules,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    path = ws.submission / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path
