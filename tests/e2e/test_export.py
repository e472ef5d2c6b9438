"""`msml export`: the course's exact trees, the zip, clean workflows, and each exported repository working on its
own in a fresh virtualenv (pip install -r requirements.txt, then the course scripts and `mlflow run MLProject`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from msml.config import DEFAULT_DOCKERHUB_USER, DEFAULT_GITHUB_USER, DEFAULT_STUDENT, load_settings
from msml.contract import Contract
from msml.export import (ALERTING_DIR, GRAFANA_DIR, MISSING_FILE, PROMETHEUS_DIR, SERVING_IMAGE, ExportError,
                         _copy_processed, _copy_raw, check_names, collect_evidence, serving_evidence, write_eksperimen,
                         write_submission, write_workflow_ci)
from tests.conftest import ROOT, run_msml
from tests.helpers import lint_workflows

pytestmark = pytest.mark.slow

S = DEFAULT_STUDENT
EKS = f"Eksperimen_SML_{S}"
SUB = f"SMSML_{S}"
WHEEL = "vendor/msml-0.1.0-py3-none-any.whl"
DATA = "adult_preprocessing"
PROCESSED_FILES = {"quarantine.csv", "report.json", "test.csv.gz", "test_clean.csv", "train.csv.gz",
                   "train_clean.csv", "transformer.joblib"}

# The course's trees, exactly (names, spelling, spaces). `<dir>/` marks a folder; a processed-dataset folder
# is checked file by file separately. README/.gitignore/requirements.txt/vendor carry the pinned package.
EXPECTED = {
    EKS: {
        ".github/", ".github/workflows/", ".github/workflows/preprocessing.yml", ".gitignore", "README.md",
        "requirements.txt", "vendor/", WHEEL,
        "adult_raw/", "adult_raw/README.md", "adult_raw/adult.csv",
        "preprocessing/", f"preprocessing/Eksperimen_{S}.ipynb", f"preprocessing/automate_{S}.py",
        f"preprocessing/{DATA}/",
    },
    "Workflow-CI": {
        ".github/", ".github/workflows/", ".github/workflows/training.yml", ".gitignore", "README.md",
        "requirements.txt", "vendor/", WHEEL,
        "MLProject/", "MLProject/MLproject", "MLProject/conda.yaml", "MLProject/modelling.py",
        f"MLProject/{DATA}/", "MLProject/DockerHub.txt",
    },
    SUB: {
        f"{EKS}.txt", "Workflow-CI.txt",
        "Membangun_model/", "Membangun_model/modelling.py", "Membangun_model/modelling_tuning.py",
        f"Membangun_model/{DATA}/", "Membangun_model/requirements.txt", "Membangun_model/DagsHub.txt",
        "Membangun_model/vendor/", f"Membangun_model/{WHEEL}",
        "Monitoring dan Logging/", "Monitoring dan Logging/2.prometheus.yml",
        "Monitoring dan Logging/3.prometheus_exporter.py", "Monitoring dan Logging/4.bukti monitoring Prometheus/",
        "Monitoring dan Logging/5.bukti monitoring Grafana/", "Monitoring dan Logging/6.bukti alerting Grafana/",
        "Monitoring dan Logging/7.inference.py",
    },
}
# Without running servers (--no-evidence) these are listed in MISSING_EVIDENCE.md, never faked.
EVIDENCE = {
    f"{SUB}/Membangun_model/screenshoot_dashboard.jpg", f"{SUB}/Membangun_model/screenshoot_artifak.jpg",
    f"{SUB}/Monitoring dan Logging/1.bukti_serving.jpg", f"{SUB}/Monitoring dan Logging/4.bukti monitoring Prometheus/",
    f"{SUB}/Monitoring dan Logging/5.bukti monitoring Grafana/", f"{SUB}/Monitoring dan Logging/6.bukti alerting Grafana/",
}


def tree(root: Path) -> set[str]:
    """Relative paths under root (folders end in /), without .git/ and without the processed datasets' files."""
    found = set()
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if rel.parts[0] == ".git" or (len(rel.parts) > 1 and rel.parts[-2] == DATA):
            continue
        found.add(rel.as_posix() + ("/" if path.is_dir() else ""))
    return found


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "dist"
    result = run_msml("export", "--out", str(out), "--no-evidence", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def test_exact_trees(exported):
    assert {p.name for p in exported.iterdir()} == {EKS, "Workflow-CI", SUB, f"{SUB}.zip", MISSING_FILE}
    for unit, expected in EXPECTED.items():
        assert tree(exported / unit) == expected, unit
    committed = digests(ROOT / "data" / DATA)
    assert set(committed) == PROCESSED_FILES
    for folder in (f"{EKS}/preprocessing/{DATA}", f"Workflow-CI/MLProject/{DATA}", f"{SUB}/Membangun_model/{DATA}"):
        assert digests(exported / folder) == committed, folder
    assert (exported / EKS / "adult_raw" / "adult.csv").read_bytes() == (ROOT / "data/adult_raw/adult.csv").read_bytes()


def test_zip_holds_exactly_the_submission_folder(exported):
    with zipfile.ZipFile(exported / f"{SUB}.zip") as zf:
        names = set(zf.namelist())
    on_disk = {f"{SUB}/"} | {f"{SUB}/{p.relative_to(exported / SUB).as_posix()}" + ("/" if p.is_dir() else "")
                            for p in (exported / SUB).rglob("*")}
    assert names == on_disk
    assert all(name.startswith(f"{SUB}/") for name in names)
    # the empty evidence folders are in the zip as folders, with nothing inside
    for folder in (PROMETHEUS_DIR, GRAFANA_DIR, ALERTING_DIR):
        assert f"{SUB}/Monitoring dan Logging/{folder}/" in names
        assert not [n for n in names if n.startswith(f"{SUB}/Monitoring dan Logging/{folder}/") and not n.endswith("/")]


def test_missing_evidence_is_listed_with_commands_not_faked(exported):
    report = (exported / MISSING_FILE).read_text()
    for item in EVIDENCE:
        assert f"`{item}`" in report, item
        assert not any((exported / item).glob("*")) if item.endswith("/") else not (exported / item).exists()
    assert "docker compose" not in report  # compose publishes make demo's ports: never both
    grafana_items = [line for line in report.splitlines() if GRAFANA_DIR in line or ALERTING_DIR in line]
    assert len(grafana_items) == 2
    assert report.count(f"make demo && .venv/bin/msml evidence grafana --out {exported}") == 2
    assert not list(exported.rglob("*.jpg"))


def test_each_repository_is_committed_on_main(exported):
    for repo in (EKS, "Workflow-CI"):
        path = exported / repo
        git = lambda *a: subprocess.run(["git", "-C", str(path), *a], capture_output=True, text=True)  # noqa: E731
        assert git("rev-parse", "--abbrev-ref", "HEAD").stdout.strip() == "main"
        assert git("status", "--porcelain").stdout == ""
        assert len(git("log", "--format=%H").stdout.split()) == 1
        assert git("config", "--local", "user.name").stdout == ""  # the student's identity for their commits
        assert WHEEL in git("ls-files").stdout.split("\n")
        assert f"git remote add origin https://github.com/{DEFAULT_GITHUB_USER}/{repo}.git" in \
            (path / "README.md").read_text()


def test_links_and_names_come_from_config(exported):
    sub = exported / SUB
    assert (sub / f"{EKS}.txt").read_text() == f"https://github.com/{DEFAULT_GITHUB_USER}/{EKS}\n"
    assert (sub / "Workflow-CI.txt").read_text() == f"https://github.com/{DEFAULT_GITHUB_USER}/Workflow-CI\n"
    dagshub = (sub / "Membangun_model" / "DagsHub.txt").read_text()
    assert dagshub.startswith(f"https://dagshub.com/{DEFAULT_GITHUB_USER}/{EKS}.mlflow\n")
    assert "MLFLOW_TRACKING_PASSWORD=<" in dagshub  # documented, no token
    assert (exported / "Workflow-CI/MLProject/DockerHub.txt").read_text() == \
        f"https://hub.docker.com/r/{DEFAULT_DOCKERHUB_USER}/adult-income-classifier\n"


def test_options_override_names(tmp_path):
    settings = load_settings(root=ROOT).with_overrides(student="Ani", github_user="ani-gh", dockerhub_user="anidh")
    wheel = tmp_path / "msml-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"not a real wheel: only copied")
    write_eksperimen(settings, ROOT, tmp_path / "E", wheel, ["x==1"])
    write_workflow_ci(settings, ROOT, tmp_path / "W", wheel, ["x==1"])
    write_submission(settings, ROOT, tmp_path / "S", wheel, ["x==1"])
    assert (tmp_path / "E/preprocessing/automate_Ani.py").is_file()
    assert (tmp_path / "E/preprocessing/Eksperimen_Ani.ipynb").is_file()
    assert "python preprocessing/automate_Ani.py" in (tmp_path / "E/.github/workflows/preprocessing.yml").read_text()
    assert "https://github.com/ani-gh/Eksperimen_SML_Ani.git" in (tmp_path / "E/README.md").read_text()
    assert (tmp_path / "S/Eksperimen_SML_Ani.txt").read_text() == "https://github.com/ani-gh/Eksperimen_SML_Ani\n"
    assert "IMAGE: anidh/adult-income-classifier" in (tmp_path / "W/.github/workflows/training.yml").read_text()
    assert (tmp_path / "W/MLProject/DockerHub.txt").read_text() == "https://hub.docker.com/r/anidh/adult-income-classifier\n"


def test_workflows_lint_clean_and_fit_their_repository(exported):
    workflows = sorted(exported.glob("*/.github/workflows/*.yml"))
    assert [w.relative_to(exported).as_posix() for w in workflows] == [
        f"{EKS}/.github/workflows/preprocessing.yml", "Workflow-CI/.github/workflows/training.yml"]
    assert lint_workflows(workflows) == []
    for workflow in workflows:
        repo = workflow.parents[2]
        spec = yaml.safe_load(workflow.read_text())
        for pattern in spec[True]["push"]["paths"]:  # PyYAML reads the key `on` as True
            first = pattern.lstrip("!").split("/")[0].replace("**", "")
            assert (repo / first).exists(), f"{workflow.name}: trigger path {pattern} matches nothing in {repo.name}"
        text = workflow.read_text()
        assert "pip install -r requirements.txt" in text
    pre = (exported / EKS / ".github/workflows/preprocessing.yml").read_text()
    assert f"python preprocessing/automate_{S}.py" in pre and "[skip ci]" in pre
    assert f"PROCESSED_DIR: preprocessing/{DATA}" in pre
    train = (exported / "Workflow-CI/.github/workflows/training.yml").read_text()
    for needle in ("mlflow run MLProject -e tune", "run_info.json", "mlflow models build-docker",
                   "docker/login-action@", "secrets.DOCKERHUB_TOKEN", "actions/upload-artifact@"):
        assert needle in train, needle


def test_requirements_pin_the_runtime_closure_and_the_wheel(exported):
    locked = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            locked[name.lower().replace("_", "-")] = version
    texts = {p: (exported / p).read_text() for p in
             (f"{EKS}/requirements.txt", "Workflow-CI/requirements.txt", f"{SUB}/Membangun_model/requirements.txt")}
    assert len(set(texts.values())) == 1
    lines = [line for line in next(iter(texts.values())).splitlines() if line and not line.startswith("#")]
    assert lines[-1] == f"./{WHEEL}"
    pins = dict(line.split("==") for line in lines[:-1])
    assert {"mlflow", "scikit-learn", "pandas", "SQLAlchemy", "gunicorn"} <= set(pins)
    assert not {"pytest", "zizmor", "check-jsonschema", "nbclient", "schemathesis"} & set(pins)  # dev tools stay out
    for name, version in pins.items():
        assert locked.get(name.lower().replace("_", "-")) == version, name
    conda = yaml.safe_load((exported / "Workflow-CI/MLProject/conda.yaml").read_text())
    assert conda["dependencies"][-1]["pip"][-1] == f"../{WHEEL}"
    mlproject = yaml.safe_load((exported / "Workflow-CI/MLProject/MLproject").read_text())
    for entry in ("main", "tune"):
        assert mlproject["entry_points"][entry]["command"].startswith("python modelling.py ")
        assert mlproject["entry_points"][entry]["parameters"]["data_path"]["default"] == DATA
    with zipfile.ZipFile(exported / "Workflow-CI" / WHEEL) as zf:
        assert "msml/contracts/adult.yaml" in zf.namelist() and "msml/preprocessing.py" in zf.namelist()


def test_course_scripts_say_what_they_do_and_where_the_logic_lives(exported):
    checks = {
        f"{EKS}/preprocessing/automate_{S}.py": "msml.preprocessing",
        "Workflow-CI/MLProject/modelling.py": "msml.training",
        f"{SUB}/Membangun_model/modelling.py": "msml.training",
        f"{SUB}/Membangun_model/modelling_tuning.py": "msml.tuning",
        f"{SUB}/Monitoring dan Logging/3.prometheus_exporter.py": "msml/serving/gateway.py",
        f"{SUB}/Monitoring dan Logging/7.inference.py": "msml/loadgen.py",
    }
    for rel, module in checks.items():
        text = (exported / rel).read_text()
        compile(text, rel, "exec")
        assert text.startswith('"""') and module in text, rel
    notebook = json.loads((exported / EKS / f"preprocessing/Eksperimen_{S}.ipynb").read_text())
    code = "\n".join("".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code")
    assert 'RAW_PATH = "../adult_raw/adult.csv"' in code and "data/adult_raw" not in code


def test_exported_repositories_run_on_their_own_in_a_fresh_venv(exported, tmp_path):
    """One fresh venv from the exported requirements.txt; the course scripts and `mlflow run` in temp copies."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "MSML_", "VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    work = tmp_path / "work"
    for unit in (EKS, "Workflow-CI", SUB):
        shutil.copytree(exported / unit, work / unit)

    def run(cmd, cwd, timeout=900, **extra):
        result = subprocess.run(cmd, cwd=cwd, env={**env, **extra}, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"{cmd} exited {result.returncode}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        return result

    run([str(py), "-m", "pip", "install", "-q", "-r", "requirements.txt"], cwd=work / "Workflow-CI")
    # the scripts not run below import and describe themselves from the installed wheel
    for folder, script, words in (("Membangun_model", "modelling_tuning.py", "--n-trials"),
                                  ("Monitoring dan Logging", "3.prometheus_exporter.py", "--model-url"),
                                  ("Monitoring dan Logging", "7.inference.py", "--drift-share")):
        assert words in run([str(py), script, "--help"], cwd=work / SUB / folder).stdout, script

    # Kriteria 1: automate_<student>.py rewrites the processed dataset, byte-identical to this repository's
    processed = work / EKS / "preprocessing" / DATA
    shutil.rmtree(processed)
    run([str(py), f"preprocessing/automate_{S}.py"], cwd=work / EKS)
    assert digests(processed) == digests(ROOT / "data" / DATA)

    # Kriteria 2: modelling.py trains against a temp tracking store
    store = f"sqlite:///{tmp_path / 'm.db'}"
    out = run([str(py), "modelling.py", "--run-info", str(tmp_path / "baseline.json")],
              cwd=work / SUB / "Membangun_model", MLFLOW_TRACKING_URI=store)
    info = json.loads((tmp_path / "baseline.json").read_text())
    assert info["metrics"]["test_roc_auc"] > 0.85, out.stdout

    # Kriteria 3: mlflow run MLProject (the venv's mlflow first on PATH)
    run_info = tmp_path / "project.json"
    result = run(["mlflow", "run", "MLProject", "-e", "main", "--env-manager", "local",
                  "--experiment-name", "adult-classification", "-P", f"run_info={run_info}"],
                 cwd=work / "Workflow-CI", MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'w.db'}")
    project = json.loads(run_info.read_text())
    assert f"Run (ID '{project['run_id']}') succeeded" in result.stderr
    assert project["metrics"]["test_roc_auc"] == pytest.approx(info["metrics"]["test_roc_auc"])


# --- evidence comes from running servers only ---------------------------------------------------------------

def test_without_running_servers_every_evidence_is_listed_and_nothing_written(tmp_path):
    settings = load_settings(root=ROOT).with_overrides(tracking_uri=f"sqlite:///{tmp_path / 'empty.db'}",
                                                       artifact_root=tmp_path / "artifacts")
    folder = tmp_path / SUB
    dead = "http://127.0.0.1:9"  # discard port: nothing answers
    written, missing = collect_evidence(settings, tmp_path, folder, dead, dead, dead, tmp_path / "none.jsonl",
                                        echo=lambda _: None)
    assert written == [] and not list(tmp_path.rglob("*.jpg"))
    listed = {m.path for m in missing}
    for item in EVIDENCE:
        assert any(path.startswith(item) for path in listed), item
    assert all(m.command for m in missing)


def test_serving_evidence_renders_a_live_request_and_response(processed, contract, tmp_path, monkeypatch):
    """1.bukti_serving.jpg from a real `mlflow models serve` of a registered champion: the text is the live answer;
    then the MLflow UI screenshots of that champion, non-blank."""
    import httpx

    import msml.evidence
    from msml.serving.model_server import ModelServer
    from tests.integration.serving_fixtures import free_port, train_and_register

    model = train_and_register(processed, contract, tmp_path / "registry", contract.model_name)
    settings = load_settings(root=ROOT).with_overrides(processed_dir=processed, tracking_uri=model.tracking_uri)
    rendered = {}
    real_text_image = msml.evidence.text_image

    def spy(text, path, **kw):
        rendered["text"] = text
        return real_text_image(text, path, **kw)

    monkeypatch.setattr(msml.evidence, "text_image", spy)
    with ModelServer(model.uri, model.tracking_uri, free_port(), tmp_path / "server.log") as server:
        image = serving_evidence(settings, tmp_path / SERVING_IMAGE, server.url)
        body = json.loads(rendered["text"].split("-d @request.json\n", 1)[1].split("\n\n", 1)[0])
        direct = httpx.post(f"{server.url}/invocations", json=body, timeout=30).json()
    assert image.read_bytes()[:3] == b"\xff\xd8\xff"  # a JPEG
    assert json.dumps(direct, indent=2) in rendered["text"]
    assert f"mlflow models serve -m models:/{contract.model_name}@champion" in rendered["text"]
    assert "HTTP 200" in rendered["text"]
    assert set(body["dataframe_records"][0]) == set(Contract.load().features)

    # the MLflow UI pages of the same store (its own `mlflow server`), each captured once its content showed
    from msml.evidence import MLFLOW_ARTIFACTS, MLFLOW_DASHBOARD, check_capture, mlflow_evidence

    ui = settings.with_overrides(artifact_root=tmp_path / "registry" / "artifacts", experiment="serving-tests",
                                 model_name=contract.model_name)
    shots = mlflow_evidence(ui, tmp_path / "mlflow")
    assert [p.name for p in shots] == [MLFLOW_DASHBOARD, MLFLOW_ARTIFACTS]
    for shot in shots:
        check_capture(shot)



# --- re-export and safety -----------------------------------------------------------------------------------------

def _git(path, *args):
    result = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_second_export_into_pushed_clones_adds_a_commit_that_fast_forwards(exported, tmp_path):
    """The student pushed the first export, cloned it back, exports again (another Docker Hub user): the clone gets
    one new commit on top of the pushed one, and `git push` fast-forwards the remote."""
    dist = tmp_path / "dist"
    remotes = {}
    for repo in (EKS, "Workflow-CI"):
        remotes[repo] = tmp_path / f"{repo}.git"
        subprocess.run(["git", "clone", "-q", "--bare", str(exported / repo), str(remotes[repo])], check=True)
        subprocess.run(["git", "clone", "-q", str(remotes[repo]), str(dist / repo)], check=True)
    (dist / "Workflow-CI" / "stale.txt").write_text("a file the new export does not write")
    first = {repo: _git(dist / repo, "rev-parse", "HEAD") for repo in remotes}
    result = run_msml("export", "--out", str(dist), "--no-evidence", "--dockerhub-user", "other-user", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    for repo in remotes:
        clone = dist / repo
        assert _git(clone, "status", "--porcelain") == ""
        assert _git(clone, "rev-parse", "HEAD~1") == first[repo]  # on top of the pushed history
        assert _git(clone, "remote", "get-url", "origin") == str(remotes[repo])  # the clone stays a clone
        push = subprocess.run(["git", "-C", str(clone), "push", "origin", "main"], capture_output=True, text=True)
        assert push.returncode == 0 and "rejected" not in push.stderr, push.stderr
        assert _git(remotes[repo], "rev-parse", "main") == _git(clone, "rev-parse", "HEAD")
    assert not (dist / "Workflow-CI" / "stale.txt").exists()
    assert "IMAGE: other-user/" in (dist / "Workflow-CI/.github/workflows/training.yml").read_text()


def test_bad_names_are_refused_with_one_clear_line(tmp_path):
    result = run_msml("export", "--out", str(tmp_path / "dist"), "--no-evidence", "--student", "Yudha Elfransyah",
                      timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip() == ("error: --student 'Yudha Elfransyah' is not a valid name: "
                                     "use only letters, digits, '-' and '_'")
    assert not (tmp_path / "dist").exists()
    settings = load_settings(root=ROOT)
    for field, option, value in (("github_user", "--github-user", "../x"), ("dockerhub_user", "--dockerhub-user", "a;b"),
                                 ("student", "--student", "")):
        with pytest.raises(ExportError, match=f"^{option} {re.escape(repr(value))} is not a valid name"):
            check_names(settings.with_overrides(**{field: value}))
    check_names(settings.with_overrides(student="Ani_2", github_user="ani-gh"))  # letters, digits, - and _ pass


def test_only_the_raw_file_and_the_listed_processed_outputs_are_copied(tmp_path):
    from msml.preprocessing import OUTPUT_FILES

    raw_dir, processed = tmp_path / "raw", tmp_path / "processed"
    shutil.copytree(ROOT / "data" / "adult_raw", raw_dir)
    shutil.copytree(ROOT / "data" / DATA, processed)
    for folder in (raw_dir, processed):
        (folder / "credentials.env").write_text("TOKEN=not-for-export\n")
        (folder / "scratch").mkdir()
        (folder / "scratch" / "big.bin").write_bytes(b"x")
    settings = load_settings(root=ROOT).with_overrides(raw_path=raw_dir / "adult.csv", processed_dir=processed)
    _copy_raw(settings, tmp_path / "out_raw")
    _copy_processed(settings, tmp_path / "out_processed")
    assert {p.name for p in (tmp_path / "out_raw").iterdir()} == {"adult.csv", "README.md"}
    assert {p.name for p in (tmp_path / "out_processed").iterdir()} == set(OUTPUT_FILES) == PROCESSED_FILES
    (processed / "train.csv.gz").unlink()
    with pytest.raises(ExportError, match="missing train.csv.gz"):
        _copy_processed(settings, tmp_path / "again")
