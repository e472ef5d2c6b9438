"""`msml export`: write the course's three repositories, the submission folder and the ordered path to submit them.

```
<out>/SUBMIT.md                   accounts, tokens, secrets, pushes, runs, re-zip, upload: in order, names filled in
<out>/Eksperimen_SML_<student>/   git repo: .github/workflows/preprocessing.yml, <dataset>_raw/, preprocessing/{
                                    Eksperimen_<student>.ipynb, automate_<student>.py, <dataset>_preprocessing/}
<out>/Workflow-CI/                git repo: .github/workflows/training.yml, MLProject/{
                                    MLproject, conda.yaml, modelling.py, modelling_tuning.py, <dataset>_preprocessing/,
                                    DockerHub.txt}
<out>/SMSML_<student>/            Eksperimen_SML_<student>.txt, Workflow-CI.txt, Membangun_model/,
                                  Monitoring dan Logging/
<out>/SMSML_<student>.zip         the submission folder
<out>/MISSING_EVIDENCE.md         what could not be produced here, each with the command that produces it
```

The course's files are standalone scripts (`msml.handin.course`, no msml inside); each folder's requirements are
what its files import (`msml.handin.requirements`); the repositories are committed as the student
(`msml.handin.repos`). Names and numbering: `msml.handin.names`.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from msml.config import Settings
from msml.errors import ExportError
from msml.handin.missing import Missing, grafana_missing, missing_report, not_taken
from msml.handin.names import (
    ALERTING_DIR,
    GRAFANA_DIR,
    MISSING_FILE,
    MONITORING,
    SUBMIT_FILE,
    WORKFLOW_CI,
    eksperimen_name,
    submission_name,
)
from msml.handin.repos import check_names, clear_worktree, git_commit, git_identity, zip_folder
from msml.handin.units import write_eksperimen, write_submission, write_workflow_ci


@dataclass
class ExportResult:
    out: Path
    repositories: dict[str, Path]
    submission: Path
    archive: Path
    missing: list[Missing] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def export(
    settings: Settings,
    out: str | Path,
    author: str | None = None,
) -> ExportResult:
    """Write the three units, SUBMIT.md, the zip and the missing-evidence list under `out` (replacing an earlier
    export; the git history of an earlier export's repositories is kept). `author`: "Name <email>" of the commits
    (default: the machine's `git config user.name / user.email`)."""
    from msml.handin.submit import submit_text

    root = settings.root
    check_names(settings)
    identity = git_identity(author)
    for needed in ("pyproject.toml", "requirements/runtime.txt"):  # the pins come from the checkout
        if not (root / needed).is_file():
            raise ExportError(f"{root} has no {needed}: run `msml export` in the msml repository (or set MSML_HOME)")
    out = Path(out).resolve()
    student = settings.student
    eksperimen = out / eksperimen_name(student)
    workflow_ci = out / WORKFLOW_CI
    submission = out / submission_name(student)
    archive = out / f"{submission_name(student)}.zip"
    for repo in (eksperimen, workflow_ci):
        clear_worktree(repo)
    kept = tempfile.TemporaryDirectory(prefix="msml-export-grafana-")
    grafana_dirs = [submission / MONITORING / sub for sub in (GRAFANA_DIR, ALERTING_DIR)]
    for i, sub in enumerate(grafana_dirs):  # `msml evidence grafana` made these: an export does not undo it
        if sub.is_dir():
            shutil.copytree(sub, Path(kept.name) / str(i))
    if submission.exists():
        shutil.rmtree(submission)
    for path in (archive, out / MISSING_FILE):
        path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    write_eksperimen(settings, root, eksperimen)
    write_workflow_ci(settings, root, workflow_ci)
    write_submission(settings, root, submission)
    (out / SUBMIT_FILE).write_text(submit_text(settings))
    seconds["write"] = time.perf_counter() - started

    with kept:
        for i, sub in enumerate(grafana_dirs):
            if (Path(kept.name) / str(i)).is_dir():
                shutil.copytree(Path(kept.name) / str(i), sub, dirs_exist_ok=True)

    # every image is made by the hand-in's own files (`msml handin`) or a running Grafana: listed, never taken here
    missing = not_taken(out, submission)
    from msml.handin.grafana import grafana_evidence_complete

    if grafana_evidence_complete(submission / MONITORING / GRAFANA_DIR, submission / MONITORING / ALERTING_DIR):
        missing = [m for m in missing if m not in grafana_missing(out, submission)]

    git_commit(eksperimen, "Raw data, experiment notebook and automated preprocessing", identity)
    git_commit(workflow_ci, "MLflow Project and its training workflow", identity)
    zip_folder(submission, archive)
    if missing:
        (out / MISSING_FILE).write_text(missing_report(missing))
    return ExportResult(
        out, {eksperimen.name: eksperimen, WORKFLOW_CI: workflow_ci}, submission, archive, missing, seconds
    )
