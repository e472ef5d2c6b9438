"""The hand-in's images, each of the hand-in's own processes, each recorded for `evidence.json`.

- `serving_terminal`: `mlflow models serve` of the runs' model typed into a real terminal (`msml.handin.terminal`),
  then a request typed in a second pane and its answer: `1.bukti_serving.jpg`. The server stays up (the exporter
  forwards to it) until the context ends.
- `mlflow_pages`: `mlflow ui` over the store modelling.py / modelling_tuning.py wrote: the runs page and the served
  run's artifacts page.
- `prometheus_pages`: a graph per dashboard panel the exporter's metrics can draw (time range fitted to the
  traffic), then the rules and alerts pages of Prometheus started from 2.prometheus.yml.
Each returns manifest entries: {file (relative to the submission folder), url or command, process, time range, ...}.
"""

from __future__ import annotations

import json
import math
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from msml.errors import ExportError
from msml.handin.names import MEMBANGUN, MLFLOW_ARTIFACTS, MLFLOW_DASHBOARD, MONITORING, PROMETHEUS_DIR, SERVING_IMAGE

DASHBOARD, ARTIFACTS = MLFLOW_DASHBOARD, MLFLOW_ARTIFACTS
PROMPT = r"\[\e[1;32m\]\w\[\e[0m\] $ "
ALERTS_SHOWN = ("DataDriftPSI", "LiveAccuracyDrop")  # the phases drive these across their thresholds


def _get_json(url: str, timeout: float = 10) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def machine_paths(text: str, ws) -> list[str]:
    """Paths of this machine in `text` (the scratch home, this checkout, the interpreter): none may be shown."""
    import sys

    from msml.config import load_settings

    needles = {str(ws.home), str(ws.home.parent), str(load_settings().root), str(Path(sys.executable).parent)}
    return sorted(n for n in needles if n and n in text)


def first_test_row(data: Path, contract) -> tuple[dict, str]:
    """The first row of the hand-in's test split as the model takes it (JSON-ready, missing -> null), its label."""
    import pandas as pd

    categorical = {c.name: str for c in contract.columns if not c.is_numeric}
    frame = pd.read_csv(data / "test_clean.csv", dtype=categorical, keep_default_na=False, na_values=[""], nrows=1)
    return json.loads(frame[contract.features].to_json(orient="records"))[0], str(frame[contract.target].iloc[0])


@contextmanager
def serving_terminal(ws, settings, run_id: str, port: int, images: list[dict]):
    """`mlflow models serve` in a terminal pane, a request and its answer in another; the image; the server runs
    until the `with` ends (stopped with the terminal, by PID)."""
    from msml.handin.terminal import Terminal
    from msml.ops.processes import wait_ready

    row, truth = first_test_row(ws.model_dir / f"{settings.dataset}_preprocessing", settings.contract)
    (ws.monitoring_dir / "request.json").write_text(json.dumps({"dataframe_records": [row]}, indent=1) + "\n")
    model_dir, monitoring = ws.shown(ws.model_dir), ws.shown(ws.monitoring_dir)
    serve = (
        f"MLFLOW_TRACKING_URI=sqlite:///mlflow.db mlflow models serve -m runs:/{run_id}/model "
        f"-h 127.0.0.1 -p {port} --env-manager local"
    )
    curl = (
        f"curl -s -X POST http://127.0.0.1:{port}/invocations -H 'Content-Type: application/json' "
        "-d @request.json; echo"
    )
    with Terminal({**ws.env(), "PS1": PROMPT, "TERM": "xterm-256color"}, ws.home) as term:
        top = term.tmux("display-message", "-p", "-t", "main", "#{pane_id}").strip()
        term.tmux("select-pane", "-t", top, "-T", "model server: mlflow models serve")
        low = term.split(26, f"client (true label of the row: {truth})")
        started = time.time()
        term.type(top, f"cd {_tilde(model_dir)} && source .venv/bin/activate")
        term.type(top, serve)
        term.wait_for(top, ["Listening at"], timeout=180)
        wait_ready(f"http://127.0.0.1:{port}/ping", timeout=60)
        term.type(low, f"cd {_tilde(monitoring)}")
        term.type(low, "cat request.json")
        term.type(low, curl)
        term.wait_for(low, ['{"predictions"'], timeout=60)
        path = term.screenshot(ws.monitoring_dir / SERVING_IMAGE)
        shown = term.screen_text()
        if leaked := machine_paths(shown, ws):
            raise ExportError(f"{SERVING_IMAGE} would show paths of this machine: {', '.join(leaked)}")
        images.append(
            {
                "file": f"{MONITORING}/{path.name}",
                "what": "the model served by `mlflow models serve` and a real request to it, in a terminal",
                "commands": [
                    {"cwd": model_dir, "command": serve, "process": "mlflow models serve (gunicorn)"},
                    {"cwd": monitoring, "command": "cat request.json"},
                    {"cwd": monitoring, "command": curl},
                ],
                "time_range": [started, time.time()],
                "metrics": [],
                "screen_text": shown.rstrip(),
            }
        )
        yield term, top


def _tilde(shown: str) -> str:
    """`~/a b/c` as a shell word that still expands `~`."""
    import shlex

    return "~/" + shlex.quote(shown[2:]) if shown.startswith("~/") else shlex.quote(shown)


# The MLflow artifact view prints the artifact's location ("Path: file:///<the machine's path>/mlartifacts/..."):
# the deepest element showing it is hidden (recorded in the manifest), then no text on the page may name the machine.
HIDE_LOCATION_JS = """(home) => {
  const shows = el => el.innerText && el.innerText.includes(home);
  const deepest = [...document.querySelectorAll('body *')].filter(el => shows(el) && ![...el.children].some(shows));
  for (const el of deepest) { (el.parentElement && el.parentElement.innerText.trim().startsWith('Path') ?
    el.parentElement : el).style.display = 'none'; }
  return deepest.length;
}"""


def hide_machine_paths(page, home: str, hidden: list[int]) -> None:
    """Hide the artifact location line(s) naming `home`; ExportError when any text on the page still names it."""
    hidden.append(page.evaluate(HIDE_LOCATION_JS, home))
    if page.evaluate("(home) => document.body.innerText.includes(home)", home):
        raise ExportError("the MLflow artifacts page still shows a path of this machine after hiding its location")


def mlflow_pages(ws, servers, run_id: str) -> list[dict]:
    """`mlflow ui` over the runs' own store: the runs page (nested trials expanded) and the served run's artifacts."""
    import mlflow

    from msml.handin.evidence import RUNS_FIT, Browser, _expand_runs, _text_ready

    client = mlflow.MlflowClient(f"sqlite:///{ws.model_dir / 'mlflow.db'}")
    run = client.get_run(run_id)
    experiment = run.info.experiment_id
    runs = client.search_runs([experiment])
    names = sorted({r.info.run_name for r in runs})
    # the table lists the top-level runs first; their nested trials appear once expanded (`_expand_runs`)
    top = sorted({r.info.run_name for r in runs if "mlflow.parentRunId" not in r.data.tags})
    artifacts = [a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run_id)]
    url = f"http://127.0.0.1:{servers.mlflow_ui}"
    argv = [
        "mlflow",
        "ui",
        "--backend-store-uri",
        "sqlite:///mlflow.db",
        "--host",
        "127.0.0.1",
        "--port",
        str(servers.mlflow_ui),
    ]
    argv[0] = str(ws.model_dir / ".venv" / "bin" / "mlflow")
    proc, step = ws.start(ws.model_dir, argv, "mlflow ui", f"{url}/health", timeout=120)
    hidden: list[int] = []
    try:
        started = time.time()
        with Browser(timeout=120) as browser:
            pages = [
                (
                    DASHBOARD,
                    f"{url}/#/experiments/{experiment}",
                    _text_ready(top),
                    "MLflow runs page",
                    {"prepare": _expand_runs, "fit": RUNS_FIT},
                    names,
                ),
                (
                    ARTIFACTS,
                    f"{url}/#/experiments/{experiment}/runs/{run_id}/artifacts",
                    _text_ready([*artifacts, "MLflow Model"]),
                    "MLflow artifacts page",
                    {"prepare": lambda page: hide_machine_paths(page, str(ws.home.parent), hidden)},
                    artifacts,
                ),
            ]
            entries = []
            for name, page, ready, what, options, shows in pages:
                browser.capture(page, ws.model_dir / name, ready, what, **options)
                entries.append(
                    {
                        "file": f"{MEMBANGUN}/{name}",
                        "what": what,
                        "url": page,
                        "process": {"cwd": step.cwd, "command": step.command},
                        "time_range": [started, time.time()],
                        "metrics": [],
                        "shows": shows,
                    }
                )
        entries[-1]["hidden"] = f"{sum(hidden)} line(s) printing the artifact location, a path of the machine"
        return entries
    finally:
        ws.stop(proc)


def _wait(condition, timeout: float, what: str, every: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise ExportError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(every)


def alert_states(prom_url: str) -> dict[str, str]:
    """{alert rule name: state} from Prometheus's rules API (inactive / pending / firing)."""
    groups = _get_json(f"{prom_url}/api/v1/rules?type=alert")["data"]["groups"]
    return {r["name"]: r["state"] for g in groups for r in g["rules"]}


def exporter_job(prom_url: str, exporter_url: str) -> str:
    """The scrape job whose target is the exporter (2.prometheus.yml also scrapes Prometheus itself: a graph of
    process CPU over every job would add Prometheus's own)."""
    targets = _get_json(f"{prom_url}/api/v1/targets")["data"]["activeTargets"]
    jobs = {t["labels"]["job"] for t in targets if t["scrapeUrl"] == f"{exporter_url}/metrics"}
    if len(jobs) != 1:
        raise ExportError(f"2.prometheus.yml does not scrape the exporter at {exporter_url}/metrics in one job: {jobs}")
    return jobs.pop()


def panels_with_data(prom_url: str, start: float, end: float, job: str) -> tuple[list, dict[str, str]]:
    """The dashboard panels every query of which has data over [start, end] in `job`; {panel key: why not} for the
    rest."""
    from msml.monitoring.definitions import PANELS, promql

    chosen, skipped = [], {}
    for panel in PANELS:
        for query in panel.queries:
            expr = promql(query.expr, job=job)
            params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": 15})
            result = _get_json(f"{prom_url}/api/v1/query_range?{params}")["data"]["result"]
            if not result:
                skipped[panel.key] = f"no series for {expr} (not exported by the exporter)"
                break
        else:
            chosen.append(panel)
    return chosen, skipped


def prometheus_pages(ws, prom_url: str, exporter_url: str, phases: list[dict], profile) -> tuple[list[dict], dict]:
    """Graphs of the panels with data, fitted to the traffic; the rules and alerts pages. Returns (entries, skipped)."""
    from msml.handin.evidence import numbered, prometheus_evidence
    from msml.handin.manifest import metric_names, sources
    from msml.monitoring.definitions import promql

    start, end = min(p["start"] for p in phases), max(p["end"] for p in phases)
    interval = 15.0  # the file's scrape and evaluation interval: one more of each lands the last phase's data
    _wait(lambda: time.time() > end + 2 * interval, 3 * interval + 10, "the last scrape after the traffic")
    states = alert_states(prom_url)
    if profile.require_firing:
        _wait(
            lambda: all(alert_states(prom_url).get(a) == "firing" for a in ALERTS_SHOWN),
            20 * 60,
            f"{' and '.join(ALERTS_SHOWN)} firing",
        )
        states = alert_states(prom_url)
    else:
        missing = [a for a in ALERTS_SHOWN if states.get(a) not in ("pending", "firing")]
        if missing:
            raise ExportError(f"the traffic did not drive {', '.join(missing)} over its threshold: states {states}")
    job = exporter_job(prom_url, exporter_url)
    chosen, skipped = panels_with_data(prom_url, start, end, job)
    view_start, view_end = start - 30, time.time()
    minutes = math.ceil((view_end - view_start) / 60)
    folder = ws.monitoring_dir / PROMETHEUS_DIR
    written = prometheus_evidence(
        folder,
        prom_url,
        None,
        panels=[p.key for p in chosen],
        range_input=f"{minutes}m",
        end=view_end + 30,
        alert_names=sorted(states),
        job=job,
    )
    from msml.handin.evidence import has_react_ui, prometheus_graph_url

    classic = not has_react_ui(prom_url)
    base = prom_url + ("/classic" if classic else "")
    step = next(s for s in ws.steps if s.what == "prometheus")
    names = numbered([f"monitoring_{p.key}" for p in chosen] + ["rules_prometheus", "alerts_prometheus"])
    if [p.name for p in written] != names:
        raise ExportError(f"the Prometheus captures came out as {[p.name for p in written]}, not {names}")
    entries = []
    for i, path in enumerate(written):
        entry = {
            "file": f"{MONITORING}/{PROMETHEUS_DIR}/{path.name}",
            "process": {"cwd": step.cwd, "command": step.command},
            "time_range": [view_end + 30 - minutes * 60, view_end + 30],
        }
        if i < len(chosen):
            exprs = [promql(q.expr, job=job) for q in chosen[i].queries]
            entry.update(
                what=f"Prometheus graph: {chosen[i].title}",
                url=prometheus_graph_url(prom_url, exprs, f"{minutes}m", classic, view_end + 30),
                queries=exprs,
                metrics=metric_names(exprs),
                scraped_from=sources(prom_url, metric_names(exprs), job),
            )
        else:
            page = "rules" if "rules" in path.name else "alerts"
            entry.update(what=f"Prometheus {page} page", url=f"{base}/{page}", metrics=[], alert_states=states)
        entries.append(entry)
    return entries, skipped
