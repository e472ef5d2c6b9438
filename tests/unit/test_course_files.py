"""The course's exported scripts stand on their own: no msml import, each shows its graded technique, each compiles,
and the generated parts (contract constants, exporter metrics) follow msml's own definitions."""

from __future__ import annotations

import ast
import json
import re

import pytest

from msml.config import load_settings
from msml.handin.export import EXPORTER, EXPORTER_METRICS, INFERENCE, course_files, notebook_files
from tests.conftest import ROOT
from tests.helpers import dataset_digests

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


def test_course_files_import_only_their_requirements(files):
    """Every import is the standard library or a distribution pinned in the exported requirements.txt."""
    import sys

    from msml.handin.export import runtime_requirements

    pinned = {line.split("==")[0].lower().replace("_", "-") for line in runtime_requirements(ROOT)}
    distribution_of = {"sklearn": "scikit-learn", "yaml": "pyyaml"}
    for name, text in {**files, "notebook": notebook_code(NOTEBOOK)}.items():
        for module in imported_modules(text) - set(sys.stdlib_module_names) - {"__future__"}:
            assert distribution_of.get(module, module).replace("_", "-") in pinned, f"{name} imports {module}"


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


def test_committed_notebook_automation_is_current():
    for rel, text in notebook_files(SETTINGS, ROOT).items():
        path = ROOT / rel
        assert path.is_file() and path.read_text() == text, (
            f'{rel} is stale: python -c "from msml.config import load_settings; from msml.handin.export import '
            f"notebook_files; from msml.generated import write; s = load_settings(); write(s.root, "
            f'notebook_files(s, s.root))"'
        )


DIRTY_EDITS = [  # (row, column index, raw value): every kind of bad value the contract rejects
    (3, 0, "abc"),
    (5, 0, "150"),
    (7, 1, " Foo"),
    (9, 14, " maybe"),
    (11, 3, ""),
    (13, 2, " 12.5"),
    (15, 0, "16"),
    (17, 12, " 0"),
    (19, 3, " ?"),
    (21, 0, "-3"),
    (23, 0, "1e3"),
]


def _load_automate(files, tmp_path):
    import importlib.util

    path = tmp_path / f"automate_{STUDENT}.py"
    path.write_text(files[f"automate_{STUDENT}.py"])
    spec = importlib.util.spec_from_file_location("automate_course", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, path


def test_automate_equals_msml_preprocess_on_dirty_rows(files, tmp_path, raw_path):
    """Parity beyond the clean data: quarantined rows and their reasons are byte-identical too."""

    from msml.data.preprocessing import preprocess

    lines = raw_path.read_text().splitlines()
    rows = lines[1:2001]
    for i, col, value in DIRTY_EDITS:
        parts = rows[i].split(",")
        parts[col] = value
        rows[i] = ",".join(parts)
    raw = tmp_path / "dirty.csv"
    raw.write_text("\n".join([lines[0], *rows]) + "\n")
    report, _ = preprocess(raw, tmp_path / "package", SETTINGS.contract)
    assert report["rows_quarantined"] == len(DIRTY_EDITS)
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
