"""SUBMIT.md: the one ordered path from the export to a graded submission, with the student's names filled in.

Accounts and tokens to create, the secrets to set before the first push, the pushes in order, what a green run
looks like, the DagsHub run, the Grafana capture, re-zip and upload — each with its exact command.
"""

from __future__ import annotations

from msml.config import Settings
from msml.handin.course import template
from msml.handin.names import ARTIFACTS_BRANCH, eksperimen_name, submission_name
from msml.handin.requirements import PYTHON
from msml.handin.units import dagshub_repo, dagshub_tracking_uri, dagshub_url


def submit_text(settings: Settings) -> str:
    user = settings.github_user
    return template(
        "SUBMIT.md.tmpl",
        {
            "student": settings.student,
            "github_user": user,
            "dockerhub_user": settings.dockerhub_user,
            "image": settings.image,
            "dataset": settings.dataset,
            "eksperimen": eksperimen_name(settings.student),
            "submission": submission_name(settings.student),
            "dagshub_repo": dagshub_repo(settings),
            "dagshub_url": dagshub_url(user, dagshub_repo(settings)),
            "dagshub_tracking_uri": dagshub_tracking_uri(user, dagshub_repo(settings)),
            "artifacts_branch": ARTIFACTS_BRANCH,
            "python": PYTHON,
        },
    )
