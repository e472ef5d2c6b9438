"""The course's exported scripts stand on their own: no msml import, each shows its graded technique, each compiles,
and the generated parts (contract constants, exporter metrics) follow msml's own definitions."""

from __future__ import annotations

import ast
import json
import re

import numpy as np
import pandas as pd
import pytest

from msml.config import load_settings
from msml.handin.course import EXPORTER_METRICS, course_files
from msml.handin.names import EXPORTER, INFERENCE
from tests.conftest import ROOT
from tests.helpers import dataset_digests
from tests.rows import rule_breaks, valid_rows, write_raw_csv

SETTINGS = load_settings(root=ROOT)
STUDENT = SETTINGS.student
NOTEBOOK = ROOT / "notebooks" / f"Eksperimen_{STUDENT}.ipynb"
# The call a reviewer looks for in each file (the course's rubric), and the steps it must show as functions.
GRADED = {
    f"automate_{STUDENT}.py": [
        "def load_raw(",
        "def validate(",
        "def clean(",
        "def split(",
        "def fit_transformer(",
        "def write(",
        "def main(",
        "train_test_split(",
        "StandardScaler(",
        "OneHotEncoder(",
    ],
    "modelling.py": ["mlflow.sklearn.autolog(", "LogisticRegression(", "mlflow.start_run("],
    "modelling_tuning.py": [
        "mlflow.log_params(",
        "mlflow.log_metric(",
        "mlflow.log_metrics(",
        "mlflow.log_artifact(",
        "mlflow.sklearn.log_model(",
        "MLFLOW_TRACKING_URI",
        "training_accuracy_score",
        "training_roc_auc",
    ],
    EXPORTER: ["from prometheus_client import", "Counter(", "Histogram(", "Gauge(", "generate_latest(", "/invocations"],
    INFERENCE: ["/invocations", "test_clean.csv"],
}


@pytest.fixture(scope="module")
def files() -> dict[str, str]:
    return course_files(SETTINGS, ROOT)


def imported_modules(source: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.split(".")[0])
    return found


def notebook_code(path) -> str:
    cells = json.loads(path.read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return re.sub(r"^%.*$", "", code, flags=re.MULTILINE)  # IPython magics are not Python


def test_no_course_file_imports_msml_and_each_shows_its_graded_call(files):
    assert set(files) == set(GRADED)
    for name, text in files.items():
        assert "msml" not in imported_modules(text), name
        assert not re.search(r"^\s*(import|from)\s+msml\b", text, re.MULTILINE), name
        assert "<<" not in text, f"{name}: unfilled template key"
        missing = [call for call in GRADED[name] if call not in text]
        assert not missing, f"{name} does not show {missing}"
        assert text.startswith('"""'), f"{name}: no docstring saying what it does"


@pytest.fixture(scope="module")
def units(tmp_path_factory):
    """The three units written (no git, no evidence) into a temporary folder."""
    from msml.handin.units import write_eksperimen, write_submission, write_workflow_ci

    out = tmp_path_factory.mktemp("units")
    write_eksperimen(SETTINGS, ROOT, out / "eks")
    write_workflow_ci(SETTINGS, ROOT, out / "ci")
    write_submission(SETTINGS, ROOT, out / "sub")
    return out


REQUIREMENT_FOLDERS = {  # folder with a requirements.txt: the files it serves
    "eks": ["preprocessing/*.py", "preprocessing/*.ipynb"],
    "ci": ["MLProject/*.py"],
    "sub/Membangun_model": ["*.py"],
    "sub/Monitoring dan Logging": ["*.py"],
}


def _distribution(module: str, cache={}) -> str:  # noqa: B006 - one scan of the installed packages
    import importlib.metadata

    if not cache:
        cache.update(importlib.metadata.packages_distributions())
    return cache[module][0].lower().replace("_", "-")


def test_each_folders_requirements_are_what_its_files_import(units):
    """requirements.txt lists exactly the distributions its folder's files import (+ SQLAlchemy beside mlflow, pinned
    because 2.1 breaks mlflow 2.19), each at the runtime lock's version; conda.yaml's pip list is Workflow-CI's."""
    import sys

    import yaml

    from msml.ops.project import RUNTIME_LOCK, read_lock

    lock = read_lock(ROOT / RUNTIME_LOCK)
    sizes = {}
    for folder, patterns in REQUIREMENT_FOLDERS.items():
        imported = set()
        for pattern in patterns:
            for path in (units / folder).glob(pattern):
                source = notebook_code(path) if path.suffix == ".ipynb" else path.read_text()
                imported |= imported_modules(source)
        local = {p.stem for p in (units / folder).rglob("*.py")}
        third_party = imported - set(sys.stdlib_module_names) - {"__future__"} - local
        expected = {_distribution(m) for m in third_party}
        if "mlflow" in expected:
            expected.add("sqlalchemy")
        lines = [x for x in (units / folder / "requirements.txt").read_text().splitlines() if x and x[0] != "#"]
        pins = dict(line.split("==") for line in lines)
        assert {n.lower() for n in pins} == expected, folder
        for name, version in pins.items():
            assert lock[name.lower().replace("_", "-")][1] == version, name
        sizes[folder] = len(lines)
    assert not {"msml", "fastapi", "playwright", "grafana-foundation-sdk", "psycopg2-binary", "pandera"} & {
        n for f in REQUIREMENT_FOLDERS for n in (units / f / "requirements.txt").read_text().split()
    }
    conda = yaml.safe_load((units / "ci" / "MLProject" / "conda.yaml").read_text())
    ci_lines = [x for x in (units / "ci" / "requirements.txt").read_text().splitlines() if x and x[0] != "#"]
    assert conda["name"] == "Workflow-CI" and conda["dependencies"][-1]["pip"] == ci_lines
    assert conda["dependencies"][0] == "python=3.11"
    print("requirements lines:", sizes)


def test_the_notebook_does_its_own_preprocessing():
    code = notebook_code(NOTEBOOK)
    assert "msml" not in imported_modules(code)
    for step in (
        "pd.read_csv(",
        "drop_duplicates(",
        "train_test_split(",
        "SimpleImputer(",
        "StandardScaler(",
        "OneHotEncoder(",
        "pd.cut(",
        ".fit(train[",
        f"automate_{STUDENT}.py",
    ):
        assert step in code, step
    # split before fit: the transformer is fitted after train_test_split, on train only
    assert code.index("train_test_split(") < code.index(".fit(train[")


def test_exporter_metrics_are_the_gateways(files):
    """Names, help texts, labels and buckets written into the exporter equal msml.monitoring.metrics.GatewayMetrics."""
    from msml.monitoring.metrics import GatewayMetrics

    gateway = GatewayMetrics()
    text = files[EXPORTER]
    for attr in EXPORTER_METRICS:
        metric = getattr(gateway, attr)
        assert f"{attr.upper()} = " in text and repr(metric._name) in text and repr(metric._documentation) in text, attr
    assert len(EXPORTER_METRICS) >= 10  # the course's advanced level shows >= 10 metrics


def test_contract_constants_follow_the_contract(files):
    contract = SETTINGS.contract
    namespace: dict = {}
    source = files[f"automate_{STUDENT}.py"]
    constants = source[source.index("DATASET = ") : source.index("FEATURES = ")]
    exec(constants, namespace)
    assert list(namespace["COLUMNS"]) == contract.features
    assert namespace["TARGET"] == contract.target and namespace["POSITIVE"] == contract.positive
    assert namespace["MISSING_MARKERS"] == contract.missing_markers
    for col in contract.columns:
        spec = namespace["COLUMNS"][col.name]
        assert spec["type"] == col.type and tuple(spec.get("values", ())) == col.values
        assert spec.get("min") == col.min and spec.get("max") == col.max and spec.get("nullable", False) == col.nullable


def dirty_edits(contract) -> list[tuple[str, str | None]]:
    """(column, raw text) of every rule the contract declares broken once (tests/rows.py), plus the text forms the
    two validators parse differently (pandera coercion vs the script's patterns): a decimal and an exponent in an
    integer column, an empty cell and a padded marker in a column that may not be missing, a padded unknown value."""
    integer = next(c.name for c in contract.columns if c.type == "int")
    required = next(c.name for c in contract.columns if not c.is_numeric and not c.nullable)
    marker = contract.missing_markers[0] if contract.missing_markers else ""
    quirks = [(integer, " 12.5"), (integer, "1e3"), (required, ""), (required, f" {marker}"), (required, " Foo")]
    return [(b.column, b.value) for b in rule_breaks(contract)] + quirks


def _load_automate(files, tmp_path):
    import importlib.util

    path = tmp_path / f"automate_{STUDENT}.py"
    path.write_text(files[f"automate_{STUDENT}.py"])
    spec = importlib.util.spec_from_file_location("automate_course", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, path


def test_automate_equals_msml_preprocess_on_dirty_rows(files, tmp_path):
    """Parity beyond the clean data: quarantined rows and their reasons are byte-identical too. The rows are built
    from the contract (valid, with missing markers), three of them duplicated, then one edit per row breaks it."""
    from msml.data.preprocessing import preprocess

    contract = SETTINGS.contract
    rows = valid_rows(contract, n=2000)
    edits = dirty_edits(contract)
    for k, (column, value) in enumerate(edits):
        rows.loc[2 * k + 1, column] = np.nan if value is None else value
    rows = pd.concat([rows, rows.iloc[-3:]], ignore_index=True)  # exact duplicates, dropped by both
    raw = write_raw_csv(rows, tmp_path / "dirty.csv", contract)
    report, _ = preprocess(raw, tmp_path / "package", contract)
    assert (report["rows_quarantined"], report["duplicates_removed"]) == (len(edits), 3)
    automate, _ = _load_automate(files, tmp_path)
    automate.preprocess(raw, tmp_path / "script")
    assert dataset_digests(tmp_path / "script") == dataset_digests(tmp_path / "package")


def test_automate_refuses_bad_input_with_one_message(files, tmp_path, capsys):
    automate, _ = _load_automate(files, tmp_path)
    for text, message in (
        ("", "not found or empty"),
        ("age,workclass\n1,Private\n", "missing required column"),
        (
            "\n".join([",".join([*SETTINGS.contract.features, "class"]), ",".join(["x"] * 15)]) + "\n",
            "rows (100.0%) are invalid",
        ),
    ):
        raw = tmp_path / "bad.csv"
        raw.write_text(text)
        assert automate.main(["--raw", str(raw), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err


# --- 3.prometheus_exporter.py says what the gateway says ----------------------------------------------------------


def _load_module(files, name: str, tmp_path):
    import importlib.util

    path = tmp_path / name
    path.write_text(files[name])
    spec = importlib.util.spec_from_file_location(f"course_{abs(hash(name))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def exporter(files, tmp_path_factory):
    return _load_module(files, EXPORTER, tmp_path_factory.mktemp("exporter"))


def _families(registry) -> dict[str, tuple[str, str, frozenset]]:
    """{family name: (type, help, label names of its samples)} as a scrape shows them."""
    out = {}
    for family in registry.collect():
        labels = frozenset(k for s in family.samples for k in s.labels if k not in ("le", "quantile"))
        out[family.name] = (family.type, family.documentation, labels)
    return out


def test_exporter_exports_the_gateways_metrics_under_the_same_names(exporter):
    """Every metric family the exporter's registry holds is the gateway's (name, type, help, labels), at least ten
    of them, drift and live accuracy among them; nothing is exported that the gateway does not export."""
    from msml.monitoring.metrics import DRIFT_PSI, LIVE_ACCURACY, GatewayMetrics

    gateway = _families(GatewayMetrics().registry)
    # label names only appear once a child exists: give both sides the same children
    ours = _families(exporter.REGISTRY)
    assert set(ours) <= set(gateway), set(ours) - set(gateway)
    for name, (kind, help_text, _) in ours.items():
        assert (kind, help_text) == gateway[name][:2], name
    msml_metrics = {n for n in ours if n.startswith("msml_")}
    assert len(msml_metrics) >= 10 and {DRIFT_PSI, LIVE_ACCURACY} <= msml_metrics
    assert len(EXPORTER_METRICS) == len(msml_metrics)
    for attr in EXPORTER_METRICS:  # labels and buckets: the exporter's objects against the gateway's
        ours_metric, theirs = getattr(exporter, attr.upper()), getattr(GatewayMetrics(), attr)
        assert ours_metric._labelnames == theirs._labelnames, attr
        assert getattr(ours_metric, "_upper_bounds", None) == getattr(theirs, "_upper_bounds", None), attr


BAD_ROWS = [  # each row breaks the contract differently; the gateway's validator is the reference
    {"age": "old"},
    {"age": 150},
    {"age": 39.5},
    {"age": True},
    {"age": "39.0"},
    {"age": " 39 "},
    {"age": None},
    {"workclass": "Spaceship"},
    {"workclass": " ? "},
    {"workclass": 7},
    {"sex": None},
    {"education": " Bachelors "},
    {"unknown-column": 1},
    {"fnlwgt": 0},
    {"hours-per-week": "1e1"},
    {"capital-gain": float("inf")},
]


def test_exporter_refuses_exactly_what_the_gateway_refuses(exporter):
    """Row by row: the same (field, reason) failures, and the same typed row when the row is accepted."""
    from msml.serving.errors import ClientError
    from msml.serving.validation import RowValidator

    validator = RowValidator(SETTINGS.contract)
    rows, _ = _test_rows(3)
    for change in [{}, *BAD_ROWS]:
        row = {**rows[0], **change}
        try:
            expected, want = validator.validate([row])[0], set()
        except ClientError as exc:
            expected, want = None, {(d["field"], d["reason"]) for d in exc.details}
        try:
            got, have = exporter.check_rows([row])[0], set()
        except exporter.ClientError as exc:
            got, have = None, {(d["field"], d["reason"]) for d in exc.details}
            assert exc.status == 422
        assert have == want, change
        assert got == expected, change
    with pytest.raises(exporter.ClientError) as refused:
        exporter.check_rows(["not a row"])
    assert refused.value.details == [{"row": 0, "field": "_row", "reason": "wrong_type"}]


def _test_rows(count: int) -> tuple[list[dict], list[str]]:
    import pandas as pd

    contract = SETTINGS.contract
    frame = pd.read_csv(
        SETTINGS.processed_dir / "test_clean.csv",
        dtype={c: str for c in contract.categorical_features},
        keep_default_na=False,
        na_values=[""],
    ).head(count)
    return json.loads(frame[contract.features].to_json(orient="records")), frame[contract.target].tolist()


def test_exporter_drift_is_the_gateways(exporter):
    """The exporter's reference (read from train_clean.csv) is the one training logs with the model, and its PSI
    over the same rows is the gateway's."""
    from msml.data.preprocessing import load_clean_splits
    from msml.monitoring.drift import MIN_ROWS, SlidingPSI, build_reference

    train, _ = load_clean_splits(SETTINGS.processed_dir, SETTINGS.contract)
    expected = build_reference(train, SETTINGS.contract)
    reference = exporter.drift_reference(SETTINGS.processed_dir / "train_clean.csv")
    assert reference == expected
    rows, _ = _test_rows(MIN_ROWS + 50)
    ours, theirs = exporter.SlidingPSI(reference), SlidingPSI(expected)
    typed = exporter.check_rows(rows)
    ours.add(typed)
    theirs.add(typed)
    assert ours.values() == theirs.values() and len(ours.values()) == len(SETTINGS.contract.features)


def test_exporter_feedback_scores_like_the_gateways(exporter):
    """Live accuracy from /feedback: the exporter's book against the gateway's FeedbackBook on the same labels."""
    import asyncio
    import time

    from msml.monitoring.metrics import GatewayMetrics
    from msml.serving.feedback import FeedbackBook

    contract = SETTINGS.contract
    book = FeedbackBook(contract, GatewayMetrics())
    ours = exporter.Exporter("http://127.0.0.1:9", reference=None)
    classes = [1, 0, 1, 1, 0]
    their_ids = book.remember(classes, time.time())
    our_ids = [f"{i:032x}" for i in range(len(classes))]
    ours.predicted.update(zip(our_ids, classes, strict=True))
    truths = [contract.positive, contract.negative, contract.negative, 1, 1]
    theirs = asyncio.run(
        book.record({"feedback": [{"id": i, "label": t} for i, t in zip(their_ids, truths, strict=True)]})
    )
    ours_body = {"feedback": [{"id": i, "label": t} for i, t in zip(our_ids, truths, strict=True)]}
    answer = ours.feedback(json.dumps(ours_body).encode())
    assert answer["live_accuracy"] == theirs["live_accuracy"] == 0.6 and answer["accepted"] == 5
    assert exporter.LIVE_ACCURACY._value.get() == 0.6
    again = ours.feedback(json.dumps({"feedback": [{"id": our_ids[0], "label": 1}]}).encode())
    assert again["unknown_count"] == 1 and again["accepted"] == 0  # an id is scored once
    for bad in (b"{", b'{"feedback": []}', b'{"feedback": [{"id": "x", "label": "maybe"}]}'):
        with pytest.raises(exporter.ClientError):
            ours.feedback(bad)


def test_prometheus_yml_loads_only_the_rule_file_shipped_beside_it_and_scrapes_the_exporter(units, exporter):
    """2.prometheus.yml's rule files exist in its folder; every series a shipped rule reads is one the exporter's
    registry exposes (or a recording rule of the same file); a rule on a metric the exporter lacks is left out."""
    import yaml

    from msml.config import DEFAULT_PORTS
    from msml.handin.names import PROMETHEUS_YML, RUNBOOKS
    from msml.handin.prometheus import reads_only, series_read
    from msml.monitoring.definitions import ALERTS
    from msml.monitoring.metrics import MODEL_REPLICA_UP

    folder = units / "sub" / "Monitoring dan Logging"
    config = yaml.safe_load((folder / PROMETHEUS_YML).read_text())
    assert config["rule_files"] and all((folder / f).is_file() for f in config["rule_files"])
    targets = [t for job in config["scrape_configs"] for c in job["static_configs"] for t in c["targets"]]
    assert f"127.0.0.1:{DEFAULT_PORTS.gateway}" in targets  # the exporter's default --port
    assert "alerting" not in config  # no Alertmanager travels with the hand-in
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "info": ("_info",)}
    exposed = {f.name + s for f in exporter.REGISTRY.collect() for s in suffixes.get(f.type, ("",))}
    rules = [
        r for f in config["rule_files"] for g in yaml.safe_load((folder / f).read_text())["groups"] for r in g["rules"]
    ]
    records = {r["record"] for r in rules if "record" in r}
    for rule in rules:
        assert series_read(rule["expr"]) <= exposed | records, rule
    runbooks = (folder / RUNBOOKS).read_text()
    alerts = [r for r in rules if "alert" in r]
    # the exporter carries every gateway alert's metric; the loop's RetrainFailed reads the webhook receiver's
    # msml_retrain_decisions_total, which is no part of the hand-in, so its rule stays out
    carried = [a.name for a in ALERTS if series_read(a.expr) <= exposed | records]
    assert [a["alert"] for a in alerts] == carried
    assert {a.name for a in ALERTS} - set(carried) == {"RetrainFailed"}
    for a in alerts:
        section = a["annotations"]["runbook_url"].split("#")[1]
        assert a["annotations"]["runbook_url"].startswith(RUNBOOKS) and f"## {a['alert']}\n" in runbooks, section
    assert not reads_only(f"sum({MODEL_REPLICA_UP})", exposed)  # the filter does drop what the exporter lacks


# --- 7.inference.py's phases --------------------------------------------------------------------------------------


def test_inference_phases_make_what_they_say(files, tmp_path):
    """drifted rows are msml loadgen's drifted rows (whose PSI crosses the alert's threshold: tests/unit/test_drift.py),
    every invalid row is refused by the gateway's validator with the reason it was made for, normal rows pass."""
    from msml.monitoring.drift import MIN_ROWS, THRESHOLD, SlidingPSI, build_reference
    from msml.ops.loadgen import RowMaker
    from msml.serving.errors import ClientError
    from msml.serving.validation import RowValidator

    inference = _load_module(files, INFERENCE, tmp_path)
    rows, truths = inference.load_rows(SETTINGS.processed_dir)
    assert len(rows) == len(truths) > MIN_ROWS
    ours, theirs = inference.RowMaker(rows), RowMaker(SETTINGS.contract, rows)
    assert ours.std == pytest.approx(theirs.std, rel=1e-12)
    drifted = [ours.drifted(r) for r in rows[:MIN_ROWS]]
    assert drifted == [theirs.drifted(r) for r in rows[:MIN_ROWS]]
    validator = RowValidator(SETTINGS.contract)
    validator.validate(rows[:50] + drifted)  # still valid rows: drift is not an error
    from msml.data.preprocessing import load_clean_splits

    psi = SlidingPSI(
        build_reference(load_clean_splits(SETTINGS.processed_dir, SETTINGS.contract)[0], SETTINGS.contract)
    )
    psi.add(drifted)
    assert max(psi.values().values()) > THRESHOLD
    for i in range(2 * len(inference.INVALID_KINDS)):
        with pytest.raises(ClientError) as refused:
            validator.validate([inference.RowMaker.invalid(rows[i], i)])
        assert {d["reason"] for d in refused.value.details} == {
            inference.INVALID_KINDS[i % len(inference.INVALID_KINDS)]
        }


def test_inference_refuses_bad_options_with_one_message(files, tmp_path, capsys):
    inference = _load_module(files, INFERENCE, tmp_path)
    for argv, message in (
        (["--phases", "normal,sideways"], "unknown sideways"),
        (["--rate", "0"], "--rate and --duration > 0"),
        (["--data", str(tmp_path)], "no test_clean.csv"),
    ):
        with pytest.raises(SystemExit) as exited:
            inference.main(argv)
        assert exited.value.code == 2 and message in capsys.readouterr().err


# --- Workflow-CI keeps each run's artifacts in its own repository --------------------------------------------------


def test_commit_artifacts_keeps_every_run_on_its_branch_of_a_bare_remote(tmp_path):
    """The training workflow's artifact step (.github/scripts/commit_artifacts.sh) against a real bare remote: the
    first run creates the branch, the next adds its folder beside the first; main is never touched."""
    import subprocess

    from msml.handin.course import template, template_values
    from msml.handin.names import ARTIFACTS_BRANCH

    script = tmp_path / "commit_artifacts.sh"
    script.write_text(template("commit_artifacts.sh.tmpl", template_values(SETTINGS, ROOT)))
    remote = tmp_path / "remote.git"
    git = lambda *a, cwd=remote: subprocess.run(["git", *a], cwd=cwd, capture_output=True, text=True)  # noqa: E731
    git("init", "-q", "--bare", "-b", "main", str(remote), cwd=tmp_path)
    main_before = git("rev-parse", "--verify", "-q", "main").stdout
    for run in ("run-1", "run-2"):
        source = tmp_path / run
        (source / "artifacts" / "model").mkdir(parents=True)
        (source / "run_info.json").write_text(json.dumps({"run": run}))
        (source / "artifacts" / "model" / "MLmodel").write_text(f"flavors: {run}\n")
        done = subprocess.run(
            ["bash", str(script), str(source), str(remote), ARTIFACTS_BRANCH, run], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert f"committed artifacts/{run} to branch {ARTIFACTS_BRANCH}" in done.stdout
    files = git("ls-tree", "-r", "--name-only", ARTIFACTS_BRANCH).stdout.split()
    assert files == [
        f"artifacts/{r}/{f}" for r in ("run-1", "run-2") for f in ("artifacts/model/MLmodel", "run_info.json")
    ]
    assert git("show", f"{ARTIFACTS_BRANCH}:artifacts/run-2/run_info.json").stdout == '{"run": "run-2"}'
    assert git("rev-list", "--count", ARTIFACTS_BRANCH).stdout.strip() == "2"
    assert git("log", "-1", "--format=%an", ARTIFACTS_BRANCH).stdout.strip() == "github-actions[bot]"
    assert git("rev-parse", "--verify", "-q", "main").stdout == main_before  # nothing else of the repository moved
    usage = subprocess.run(["bash", str(script), str(tmp_path)], capture_output=True, text=True)
    assert usage.returncode == 2 and usage.stderr.startswith("usage:")
    gone = subprocess.run(
        ["bash", str(script), str(tmp_path / "run-1"), str(tmp_path / "no-such.git"), ARTIFACTS_BRANCH, "run-3"],
        capture_output=True,
        text=True,
    )
    assert gone.returncode == 1 and f"error: could not push artifacts/run-3 to branch {ARTIFACTS_BRANCH}" in gone.stderr
