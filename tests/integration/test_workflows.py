"""Every GitHub workflow in the repository passes GitHub's schema and zizmor's security audit (offline)."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import ROOT
from tests.helpers import lint_workflows

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))


def test_the_course_workflows_exist():
    names = {p.name for p in WORKFLOWS}
    assert {"preprocessing.yml", "tests.yml"} <= names


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_workflow_passes_schema_and_zizmor(workflow):
    failures = lint_workflows([workflow])
    assert not failures, "\n\n".join(failures)


def test_lint_catches_an_unsafe_workflow(tmp_path):
    """The lint is not a rubber stamp: a tag-pinned action and `${{ }}` of untrusted input in `run:` fail it."""
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "name: bad\n"
        "on: pull_request_target\n"
        "jobs:\n"
        "  x:\n"
        "    runs-on: ubuntu-24.04\n"
        "    steps:\n"
        "      - uses: actions/checkout@v4\n"
        '      - run: echo "${{ github.event.pull_request.title }}"\n'
    )
    failures = lint_workflows([bad])
    assert any(f.startswith("zizmor") and "template-injection" in f for f in failures), failures
    not_a_workflow = tmp_path / "schema.yml"
    not_a_workflow.write_text("name: schema\non: push\njobs:\n  x:\n    steps: []\n")
    assert any(f.startswith("check-jsonschema") for f in lint_workflows([not_a_workflow]))


def test_preprocessing_workflow_does_what_the_course_asks():
    """Triggers, least privilege, output verified, artifact uploaded, commit only on change with [skip ci]."""
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "preprocessing.yml").read_text())
    triggers = wf[True]  # YAML 1.1 reads the key `on` as True
    assert {"push", "workflow_dispatch", "schedule"} <= set(triggers)
    for path in (
        "data/adult_raw/**",
        "src/msml/data/contracts/**",
        "src/msml/data/contract.py",
        "src/msml/data/preprocessing.py",
    ):
        assert path in triggers["push"]["paths"]
    assert wf["permissions"] == {"contents": "read"}
    assert "concurrency" in wf
    jobs = wf["jobs"]
    writers = [name for name, job in jobs.items() if job.get("permissions", {}).get("contents") == "write"]
    assert writers == ["commit"], "only the commit-back job may write"
    runs = "\n".join(step.get("run", "") for step in jobs["preprocess"]["steps"])
    assert "msml preprocess" in runs and "load_training_data" in runs
    assert any("upload-artifact" in step.get("uses", "") for step in jobs["preprocess"]["steps"])
    commit = "\n".join(step.get("run", "") for step in jobs["commit"]["steps"])
    assert "git status --porcelain" in commit and "[skip ci]" in commit
